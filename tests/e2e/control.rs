//! The REST API of a running job, driven by the `weir` client commands:
//! `weir list`, `weir cancel`, and their errors.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{stderr, weir};

/// An endless job: generated records, throttled, into a blackhole.
const ENDLESS: &str = r#"
name = "endless"
[[sources]]
uid = "gen"
type = "datagen"
rate = 1000.0
[[sinks]]
uid = "sink"
type = "blackhole"
input = "gen"
"#;

/// A `weir run` in the background, with its API's address and job id as
/// its first line said.
struct Running {
    child: Child,
    address: String,
    id: String,
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Running {
    /// A failed test leaves no endless job behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    /// Starts `weir run` on `job` with the API on any free port.
    fn start(dir: &Path, job: &str) -> Running {
        let path = dir.join("job.toml");
        std::fs::write(&path, job).unwrap();
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--quiet", "--rest-address", "127.0.0.1:0"])
            .arg(&path)
            .env("WEIR_CACHE_DIR", cache)
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("weir starts");
        let mut lines = BufReader::new(child.stderr.take().expect("piped"));
        let mut first = String::new();
        lines.read_line(&mut first).expect("reading weir's stderr");
        // job `endless` (id 0123…): REST API on http://127.0.0.1:PORT
        let parsed = first.trim_end().split_once(" (id ").and_then(|(_, rest)| {
            let (id, address) = rest.split_once("): REST API on ")?;
            Some((id.to_owned(), address.to_owned()))
        });
        let Some((id, address)) = parsed else {
            let _ = child.kill();
            let mut rest = String::new();
            let _ = lines.read_to_string(&mut rest);
            panic!("weir run did not announce its API:\n{first}{rest}");
        };
        assert!(first.starts_with("job `endless` (id "), "{first}");
        let rest = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = lines.read_to_string(&mut rest);
            rest
        });
        Running {
            child,
            address,
            id,
            rest: Some(rest),
        }
    }

    /// Waits (a minute at most) for the run to exit: its exit code and the
    /// rest of its stderr.
    fn wait(mut self) -> (Option<i32>, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                self.child.kill().unwrap();
                panic!("weir run did not end within a minute");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let rest = self.rest.take().expect("waited once").join().unwrap();
        (status.code(), rest)
    }
}

/// `weir ARGS --address` of `job`'s API: exit code, stdout, stderr.
fn client(job: &Running, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = args.to_vec();
    all.extend(["--address", job.address.as_str()]);
    let o = weir(&all);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.code(), out, stderr(&o))
}

/// Polls `weir list` until the job is RUNNING; the matching line.
fn listed_running(job: &Running) -> String {
    let started = Instant::now();
    loop {
        let (code, out, err) = client(job, &["list"]);
        assert_eq!(code, Some(0), "{err}");
        let line = out
            .lines()
            .find(|l| l.starts_with(&job.id))
            .unwrap_or_else(|| panic!("job {} not listed:\n{out}", job.id))
            .to_owned();
        if line.contains("RUNNING") {
            return line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not RUNNING after a minute: {line}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_running_job_is_listed_and_cancelled_through_its_api() {
    let dir = tempfile::tempdir().unwrap();
    let job = Running::start(dir.path(), ENDLESS);
    let line = listed_running(&job);
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        columns[..3],
        [job.id.as_str(), "endless", "RUNNING"],
        "{line}"
    );

    let (code, out, err) = client(&job, &["cancel", &job.id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("is CANCELLING"), "{out}");
    let (code, err) = job.wait();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("job `endless` cancelled"), "{err}");
}

#[test]
fn unknown_ids_are_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let job = Running::start(dir.path(), ENDLESS);
    let unknown = "0123456789abcdef0123456789abcdef";
    for args in [
        vec!["cancel", unknown],
        vec!["savepoint", unknown, "--detached"],
        vec!["stop", unknown],
    ] {
        let (code, _, err) = client(&job, &args);
        assert_eq!(code, Some(2), "weir {args:?}: {err}");
        assert!(
            err.contains(&format!("no job with id `{unknown}`")),
            "weir {args:?}: {err}"
        );
    }
    let (code, _, err) = client(&job, &["savepoint", "status", &job.id, "feed"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("has no savepoint request `feed`"), "{err}");
    // The job ran on, untouched.
    listed_running(&job);
    let (code, _, err) = client(&job, &["cancel", &job.id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(job.wait().0, Some(130));
}

#[test]
fn a_closed_port_is_an_unreachable_api_naming_its_address() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let address = format!("http://127.0.0.1:{port}");
    let o = weir(&["list", "--address", &address]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("cannot reach the REST API at {address}")),
        "{err}"
    );
    assert!(err.contains("--address"), "{err}");
}

#[test]
fn a_taken_rest_address_fails_before_the_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, ENDLESS).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let o = weir(&[
        "run",
        "--quiet",
        "--rest-address",
        &address,
        path.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot serve the REST API on {address}")),
        "{err}"
    );
    assert!(err.contains("--rest-address"), "{err}");
}
