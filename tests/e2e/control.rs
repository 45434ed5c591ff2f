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
        Running::start_with(dir, job, &[])
    }

    /// As [`start`](Self::start), with `extra` arguments to `weir run`.
    fn start_with(dir: &Path, job: &str, extra: &[&str]) -> Running {
        let path = dir.join("job.toml");
        std::fs::write(&path, job).unwrap();
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--quiet", "--rest-address", "127.0.0.1:0"])
            .args(extra)
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

/// [`ENDLESS`] with checkpoints every 100 ms into `checkpoints/` and
/// savepoints under `savepoints/`, both beside the job file.
const ENDLESS_CHECKPOINTED: &str = r#"
name = "endless"
[[sources]]
uid = "gen"
type = "datagen"
rate = 1000.0
[[sinks]]
uid = "sink"
type = "blackhole"
input = "gen"
[checkpoints]
interval = "100ms"
storage = "checkpoints"
[savepoints]
dir = "savepoints"
"#;

/// The completed `chk-<n>` directories of job `endless` under `storage`.
fn completed(storage: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(storage.join("endless")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("_metadata").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Polls until `storage` holds a completed checkpoint newer than `after`.
fn wait_for_checkpoint_after(storage: &Path, after: &[String]) -> Vec<String> {
    let started = Instant::now();
    loop {
        let now = completed(storage);
        if now.iter().any(|c| !after.contains(c)) {
            return now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no new checkpoint after a minute: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn savepoints_go_only_under_the_roots_and_a_refused_stop_keeps_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let extra_root = dir.path().join("extra");
    let job = Running::start_with(
        dir.path(),
        ENDLESS_CHECKPOINTED,
        &["--savepoint-root", extra_root.to_str().unwrap()],
    );
    listed_running(&job);
    let storage = dir.path().join("checkpoints");
    let before = wait_for_checkpoint_after(&storage, &[]);

    let evil = dir.path().join("savepoints-evil");
    let refused: [(Vec<&str>, &str); 6] = [
        (
            vec!["stop", &job.id, "--savepoint-path", "memory://x"],
            "is not durable",
        ),
        (vec!["savepoint", &job.id, "memory://x"], "is not durable"),
        (
            vec!["savepoint", &job.id, "/tmp/evil"],
            "outside the allowed savepoint roots",
        ),
        (
            vec!["savepoint", &job.id, evil.to_str().unwrap()],
            "outside the allowed savepoint roots",
        ),
        (
            vec!["stop", &job.id, "--savepoint-path", "../../../../tmp/evil2"],
            "has a `..` segment",
        ),
        (
            vec!["savepoint", &job.id, "file:///tmp/evil"],
            "outside the allowed savepoint roots",
        ),
    ];
    for (args, needle) in refused {
        let (code, _, err) = client(&job, &args);
        assert_eq!(code, Some(2), "weir {args:?}: {err}");
        assert!(err.contains(needle), "weir {args:?}: {err}");
        assert!(err.contains("HTTP 400"), "weir {args:?}: {err}");
        assert!(err.contains("/savepoints, "), "names the roots: {err}");
    }
    assert!(!evil.exists() && !Path::new("/tmp/evil2").exists());
    // The job runs on and checkpoints on; its checkpoints are all there.
    listed_running(&job);
    let after = wait_for_checkpoint_after(&storage, &before);
    assert!(!after.is_empty());

    // Relative targets go under the default root, absolute ones under any
    // root.
    let (code, out, err) = client(&job, &["savepoint", &job.id, "nightly"]);
    assert_eq!(code, Some(0), "{err}");
    let nightly = dir.path().join("savepoints").join("nightly");
    assert!(out.trim().starts_with(nightly.to_str().unwrap()), "{out}");
    let (code, out, err) = client(&job, &["savepoint", &job.id, extra_root.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.trim().starts_with(extra_root.to_str().unwrap()),
        "{out}"
    );

    // Cancelled, the job keeps its checkpoints (retained on cancel).
    let (code, _, err) = client(&job, &["cancel", &job.id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(job.wait().0, Some(130));
    assert!(!completed(&storage).is_empty(), "checkpoints survive");
}

/// A job that runs about a second and ends: `records` generated at
/// 2000/s, with checkpoints, so `--from-latest` logs where it starts.
const BRIEF: &str = r#"
name = "endless"
[[sources]]
uid = "gen"
type = "datagen"
records = 2000
rate = 2000.0
[[sinks]]
uid = "sink"
type = "blackhole"
input = "gen"
[checkpoints]
interval = "100ms"
storage = "checkpoints"
"#;

/// A pipe whose reading end is already closed: every write to it fails
/// with EPIPE.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// A free port on the loopback interface, for a `weir run` whose stderr
/// cannot announce the one it took.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Waits (a minute at most) for `child` to exit; its exit code.
fn exit_code(child: &mut Child) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weir did not exit within a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_run_whose_stderr_is_gone_still_obeys_sigterm_and_exits_0_when_done() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
    // Endless, stderr closed from the start: SIGTERM cancels it (130).
    let path = dir.path().join("endless.toml");
    std::fs::write(&path, ENDLESS).unwrap();
    let address = free_address();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--rest-address", &address])
        .arg(&path)
        .env("WEIR_CACHE_DIR", &cache)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let o = weir(&["list", "--address", &address]);
        if String::from_utf8_lossy(&o.stdout).contains("RUNNING") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "weir run ended early");
        assert!(started.elapsed() < Duration::from_secs(60), "never RUNNING");
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(exit_code(&mut child), Some(130), "cancelled, not panicked");

    // A job that ends by itself, its summary and logs written to nowhere.
    let path = dir.path().join("brief.toml");
    std::fs::write(&path, BRIEF).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--from-latest", "--rest-address", "127.0.0.1:0"])
        .arg(&path)
        .env("WEIR_CACHE_DIR", &cache)
        .env("WEIR_LOG", "info")
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    assert_eq!(exit_code(&mut child), Some(0), "success, not 101");
}

#[test]
fn checkpoints_into_a_closed_pipe_does_not_panic_and_the_table_aligns() {
    let dir = tempfile::tempdir().unwrap();
    // Retained checkpoints to list: the job is cancelled, not finished.
    let job = Running::start(dir.path(), ENDLESS_CHECKPOINTED);
    let storage = dir.path().join("checkpoints");
    wait_for_checkpoint_after(&storage, &[]);
    let (code, _, err) = client(&job, &["cancel", &job.id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(job.wait().0, Some(130));
    let job_file = dir.path().join("job.toml");

    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("checkpoints")
        .arg(&job_file)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(exit_code(&mut child), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Read in full, the id column lines up under its header.
    let o = weir(&["checkpoints", job_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let header = out.lines().find(|l| l.contains("triggered (UTC)")).unwrap();
    let id_end = header.find("id").unwrap() + 2;
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("completed")).collect();
    assert!(!rows.is_empty(), "{out}");
    for row in rows {
        let digits = row[..id_end].trim_start();
        assert!(
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()),
            "the id ends where its header does:\n{header}\n{row}"
        );
        assert_eq!(row.as_bytes()[id_end], b' ', "{row}");
    }
}

#[test]
fn log_lines_in_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("brief.toml");
    std::fs::write(&path, BRIEF).unwrap();
    let o = super::weir_with_env(
        &["run", "--from-latest", path.to_str().unwrap()],
        &[("WEIR_LOG", "info")],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("INFO"), "a log line was written: {err}");
    assert!(!err.contains("\x1b["), "no ANSI escapes: {err:?}");
}

#[test]
fn client_commands_take_a_unique_prefix_of_the_job_id() {
    let dir = tempfile::tempdir().unwrap();
    let job = Running::start(dir.path(), ENDLESS);
    listed_running(&job);
    // No job's id starts with both `0` and `f`: one of these is unknown.
    let other = if job.id.starts_with('0') { "f" } else { "0" };
    for args in [
        vec!["cancel", other],
        vec!["stop", other],
        vec!["savepoint", other],
    ] {
        let (code, _, err) = client(&job, &args);
        assert_eq!(code, Some(2), "weir {args:?}: {err}");
        assert!(
            err.contains(&format!("job id `{other}` matches no job")),
            "weir {args:?}: {err}"
        );
    }
    let (code, _, err) = client(&job, &["cancel", "xyz"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a job id"), "{err}");

    let prefix = &job.id[..6];
    let (code, out, err) = client(&job, &["cancel", &prefix.to_uppercase()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&job.id) && out.contains("CANCELLING"), "{out}");
    assert_eq!(job.wait().0, Some(130));
}

#[test]
fn half_sent_requests_neither_stop_checkpoints_nor_keep_the_api_away() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let job = Running::start_with(
        dir.path(),
        ENDLESS_CHECKPOINTED,
        &[
            "--rest-max-connections",
            "4",
            "--rest-header-timeout",
            "300ms",
        ],
    );
    listed_running(&job);
    let storage = dir.path().join("checkpoints");
    let before = wait_for_checkpoint_after(&storage, &[]);
    // Ten times the cap, each sending half a request, then nothing.
    let address = job.address.trim_start_matches("http://").to_owned();
    let mut flood: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&address).unwrap();
            s.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // The job checkpoints on meanwhile.
    let mid = wait_for_checkpoint_after(&storage, &before);
    wait_for_checkpoint_after(&storage, &mid);
    // The server closes each after the header timeout, a few at a time.
    for s in &mut flood {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert!(
                        !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                        "a half-sent request was not closed: {e}"
                    );
                    break;
                }
            }
        }
    }
    // And answers again.
    listed_running(&job);
    let (code, _, err) = client(&job, &["cancel", &job.id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(job.wait().0, Some(130));
}
