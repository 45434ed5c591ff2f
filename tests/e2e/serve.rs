//! `weir serve`: a real host on loopback with two tenants, driven over
//! HTTP and through `weir submit` / `weir upgrade`. Tokens, namespaces,
//! confinement, `kill -9` of the host, upgrades in place.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::savepoints::{RECORDS, assert_exactly_once, reference};
use super::{plugins, stderr, weir_with_env};

/// A tenant: its name and token.
pub(super) struct Tenant {
    pub(super) name: &'static str,
    pub(super) token: String,
}

/// A `weir serve` in the background, on a free port, with tenants `acme`
/// and `globex`.
pub(super) struct Serve {
    child: Child,
    pub(super) address: String,
    pub(super) dir: PathBuf,
    log: PathBuf,
    pub(super) acme: Tenant,
    pub(super) globex: Tenant,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// A host in `dir` (config, data and storage all there), with `extra`
    /// appended to each tenant's table (quotas).
    pub(super) fn start(dir: &Path, extra: &str) -> Self {
        Self::start_with(dir, "", extra)
    }

    /// As [`Serve::start`], with `host` among the host's settings.
    pub(super) fn start_with(dir: &Path, host: &str, extra: &str) -> Self {
        let (a, a_hash) = weir_host::serve::config::new_token();
        let (g, g_hash) = weir_host::serve::config::new_token();
        let config = format!(
            "address = \"127.0.0.1:0\"\nmax_plugin_mb = 32\n{host}\n\
             [[tenants]]\nname = \"acme\"\ntokens = [\"{a_hash}\"]\n{extra}\n\
             [[tenants]]\nname = \"globex\"\ntokens = [\"{g_hash}\"]\n{extra}\n"
        );
        std::fs::write(dir.join("host.toml"), config).unwrap();
        let (child, address, log) = spawn(dir);
        Serve {
            child,
            address,
            dir: dir.to_owned(),
            log,
            acme: Tenant {
                name: "acme",
                token: a,
            },
            globex: Tenant {
                name: "globex",
                token: g,
            },
        }
    }

    /// `kill -9` of the host, then a new one on the same config and data.
    pub(super) fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let (child, address, log) = spawn(&self.dir);
        self.child = child;
        self.address = address;
        self.log = log;
    }

    /// The host's log so far.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A tenant's file directory (where its jobs' `file` paths lead).
    pub(super) fn files(&self, tenant: &Tenant) -> PathBuf {
        self.dir
            .join("weir-data/tenants")
            .join(tenant.name)
            .join("files")
    }

    /// `weir ARGS --address … --token …` as `tenant`.
    pub(super) fn weir(&self, tenant: &Tenant, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--address", &self.address, "--token", &tenant.token]);
        weir_with_env(&all, &[])
    }

    /// `weir submit JOB` as `tenant`, which must succeed: the job's id.
    pub(super) fn submit(&self, tenant: &Tenant, job: &Path) -> String {
        let o = self.weir(tenant, &["submit", job.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "submit: {}\nhost log:\n{}",
            stderr(&o),
            self.log()
        );
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    }

    /// `METHOD PATH` with `token` and `body`: the status and the body.
    pub(super) fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        http(&self.address, method, path, token, body)
    }

    /// Job `id`'s state as `tenant` sees it.
    pub(super) fn state(&self, tenant: &Tenant, id: &str) -> String {
        let (status, body) = self.http("GET", &format!("/v1/jobs/{id}"), Some(&tenant.token), b"");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["state"].as_str().unwrap().to_owned()
    }

    /// Job `id`'s registry record once it says `state` (a minute and a
    /// half at most): the record follows the job's state once its run
    /// has ended.
    pub(super) fn wait_record(&self, tenant: &Tenant, id: &str, state: &str) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let (_, body) = self.http(
                "GET",
                &format!("/v1/jobs/{id}/record"),
                Some(&tenant.token),
                b"",
            );
            let record: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if record["state"] == state {
                return record;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "job {id}'s record is not {state}: {body}; host log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until job `id` is in `state` (a minute at most).
    pub(super) fn wait_state(&self, tenant: &Tenant, id: &str, state: &str) {
        let started = Instant::now();
        loop {
            let now = self.state(tenant, id);
            if now == state {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "job {id} is {now}, not {state}, after 90 s; host log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// The child is waited for on drop or by `crash_and_restart`.
#[allow(clippy::zombie_processes)]
fn spawn(dir: &Path) -> (Child, String, PathBuf) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let log = dir.join(format!("serve-{}.log", N.fetch_add(1, Ordering::Relaxed)));
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config", dir.join("host.toml").to_str().unwrap()])
        .env("WEIR_CACHE_DIR", cache)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("weir serve starts");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("REST API on ")) {
            let address = line
                .split("REST API on ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap()
                .to_owned();
            return (child, address, log);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("weir serve exited ({status}); log:\n{text}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no REST API line; log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request over a fresh connection: the status and body.
pub(super) fn http(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let authority = address.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A body the server refuses early may meet a closed socket.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Word count over generated words as a hosted job: `RECORDS` words at
/// `rate` per second through `tokenize` and `count` (`plugin`, at
/// parallelism 2) into the file sink `out`, checkpointed every 200 ms.
pub(super) fn counts_job(dir: &Path, name: &str, plugin: &str, rate: u32) -> PathBuf {
    let text = format!(
        r#"
name = "counts"

[[sources]]
uid = "words"
type = "datagen"
seed = 11
vocabulary = 300
records = {RECORDS}
rate = {rate}

[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "words"

[[operators]]
uid = "count"
plugin = "{plugin}"
input = "tokenize"
partition = "hash"
parallelism = 2

[[sinks]]
uid = "out"
type = "file"
path = "out"
input = "count"
parallelism = 2

[checkpoints]
interval = "200ms"
"#,
        tokenize = plugins::TOKENIZE,
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn two_tenants_run_to_exactly_once_output_across_a_kill_9_of_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(&dir.path().join("ref"));
    let mut host = Serve::start(dir.path(), "");
    let job = counts_job(dir.path(), "job.toml", plugins::WORD_COUNT, 5_000);
    let a = host.submit(&host.acme, &job);
    let g = host.submit(&host.globex, &job);
    // Both have committed output, and more to come, when the host dies.
    let started = Instant::now();
    while !(has_output(&host.files(&host.acme).join("out"))
        && has_output(&host.files(&host.globex).join("out")))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    host.crash_and_restart();
    assert!(
        host.log().contains("resuming job `counts`"),
        "{}",
        host.log()
    );
    host.wait_state(&host.acme, &a, "FINISHED");
    host.wait_state(&host.globex, &g, "FINISHED");
    assert_exactly_once(&host.files(&host.acme).join("out"), &reference);
    assert_exactly_once(&host.files(&host.globex).join("out"), &reference);
    // Each sees only its own job.
    let (_, listed) = host.http("GET", "/v1/jobs", Some(&host.acme.token), b"");
    assert!(listed.contains(&a) && !listed.contains(&g), "{listed}");
}

fn has_output(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("part-"))
    })
}

#[test]
fn an_upgrade_in_place_changes_language_exactly_once_and_a_failing_one_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(&dir.path().join("ref"));
    let host = Serve::start(dir.path(), "");
    // Compiled before the job starts, so the upgrades find them cached.
    for plugin in [plugins::PY_WORD_COUNT, plugins::WORD_COUNT_BROKEN] {
        let (status, answer) = host.http(
            "POST",
            "/v1/plugins",
            Some(&host.acme.token),
            &std::fs::read(plugin).unwrap(),
        );
        assert_eq!(status, 201, "{answer}");
    }
    let job = counts_job(dir.path(), "job.toml", plugins::WORD_COUNT, 2_000);
    let id = host.submit(&host.acme, &job);
    host.wait_state(&host.acme, &id, "RUNNING");
    std::thread::sleep(Duration::from_millis(1500));
    // Rust → Python, in place.
    let o = host.weir(
        &host.acme,
        &[
            "upgrade",
            &id,
            "--plugin",
            &format!("count={}", plugins::PY_WORD_COUNT),
        ],
    );
    assert!(
        o.status.success(),
        "upgrade: {}\n{}",
        stderr(&o),
        host.log()
    );
    assert!(
        stderr(&o).contains("upgraded from savepoint"),
        "{}",
        stderr(&o)
    );
    let (_, record) = host.http(
        "GET",
        &format!("/v1/jobs/{id}/record"),
        Some(&host.acme.token),
        b"",
    );
    assert!(record.contains("\"RUNNING\""), "{record}");
    // Python → a plugin that traps in open: rolled back to Python.
    std::thread::sleep(Duration::from_millis(1000));
    let o = host.weir(
        &host.acme,
        &[
            "upgrade",
            &id,
            "--plugin",
            &format!("count={}", plugins::WORD_COUNT_BROKEN),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stderr(&o), host.log());
    assert!(
        stderr(&o).contains("runs the old ones again"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("traps in open"), "{}", stderr(&o));
    host.wait_state(&host.acme, &id, "FINISHED");
    assert_exactly_once(&host.files(&host.acme).join("out"), &reference);
}

#[test]
fn every_endpoint_needs_the_right_tenants_token_and_names_stay_in_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    // Room for acme's job (3 plugin instances: 25 mappings), not for two.
    let host = Serve::start_with(
        dir.path(),
        "max_mappings = 30",
        "[tenants.quota]\nrunning_jobs = 1",
    );
    // A job of acme's that runs until cancelled.
    let job = counts_job(dir.path(), "job.toml", plugins::WORD_COUNT, 50);
    let id = host.submit(&host.acme, &job);
    host.wait_state(&host.acme, &id, "RUNNING");
    let (acme, globex) = (
        Some(host.acme.token.as_str()),
        Some(host.globex.token.as_str()),
    );
    let endpoints = [
        ("GET", "/v1/jobs".to_owned()),
        ("POST", "/v1/jobs".to_owned()),
        ("GET", format!("/v1/jobs/{id}")),
        ("DELETE", format!("/v1/jobs/{id}")),
        ("POST", format!("/v1/jobs/{id}/savepoints")),
        ("GET", format!("/v1/jobs/{id}/savepoints/abc")),
        ("POST", format!("/v1/jobs/{id}/stop")),
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("POST", format!("/v1/jobs/{id}/upgrade")),
        ("GET", format!("/v1/jobs/{id}/checkpoints")),
        ("GET", format!("/v1/jobs/{id}/vertices")),
        ("GET", format!("/v1/jobs/{id}/record")),
        ("GET", "/v1/plugins".to_owned()),
        ("POST", "/v1/plugins".to_owned()),
        ("GET", "/v1/savepoints".to_owned()),
        ("GET", "/v1/savepoints/x".to_owned()),
        ("DELETE", "/v1/savepoints/x".to_owned()),
        ("GET", "/v1/quota".to_owned()),
        ("GET", "/metrics".to_owned()),
    ];
    for (method, path) in &endpoints {
        for token in [None, Some("weir_not-a-token"), Some("")] {
            let (status, body) = host.http(method, path, token, b"");
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
        }
        if path.contains(&id) {
            // Another tenant's job does not exist for globex.
            let (status, body) = host.http(method, path, globex, b"{}");
            assert_eq!(status, 404, "{method} {path} as globex: {body}");
            assert!(!body.contains("acme"), "{body}");
        }
    }
    let (status, _) = host.http("GET", "/healthz", None, b"");
    assert_eq!(status, 200);
    let (_, metrics) = host.http("GET", "/metrics", globex, b"");
    assert!(!metrics.contains(&id), "{metrics}");
    let (_, metrics) = host.http("GET", "/metrics", acme, b"");
    assert!(metrics.contains(&id), "{metrics}");
    // The job's plugin instances hold memory, and their CPU is counted.
    let sample = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&id))
            .unwrap_or_else(|| panic!("no {name} for the job: {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(sample("weir_job_memory_bytes") > 0.0, "{metrics}");
    assert!(sample("weir_job_cpu_seconds_total") > 0.0, "{metrics}");

    // Savepoint targets are names in acme's namespace, nothing else.
    let sp = format!("/v1/jobs/{id}/savepoints");
    for target in [
        "../globex",
        "/tmp/x",
        "s3://bucket/x",
        "file:///tmp",
        "a/../../b",
        "memory://x",
        "..",
        "a%2F..%2Fb",
    ] {
        let body = format!("{{\"target_directory\": \"{target}\"}}");
        let (status, answer) = host.http("POST", &sp, acme, body.as_bytes());
        assert_eq!(status, 400, "target {target}: {answer}");
        assert!(
            !answer.contains(dir.path().to_str().unwrap()),
            "leaks a host path: {answer}"
        );
    }
    for name in ["..%2F..%2Fetc", "a/../../x", "%2e%2e"] {
        let (status, answer) = host.http("GET", &format!("/v1/savepoints/{name}"), acme, b"");
        assert!(status == 400 || status == 404, "{name}: {status} {answer}");
    }
    // A named savepoint, then another tenant cannot see or restore it.
    let (status, answer) = host.http("POST", &sp, acme, br#"{"target_directory": "nightly"}"#);
    assert_eq!(status, 202, "{answer}");
    let request: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let request = request["request_id"].as_str().unwrap().to_owned();
    let location = loop {
        let (_, s) = host.http("GET", &format!("{sp}/{request}"), acme, b"");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        match v["status"].as_str().unwrap() {
            "COMPLETED" => break v["location"].as_str().unwrap().to_owned(),
            "IN_PROGRESS" => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("{s}"),
        }
    };
    assert!(
        location.starts_with("nightly/savepoint-counts-"),
        "shown as a name: {location}"
    );
    let (status, listed) = host.http("GET", "/v1/savepoints", acme, b"");
    assert_eq!(status, 200);
    assert!(listed.contains(&location), "{listed}");
    let (_, listed) = host.http("GET", "/v1/savepoints", globex, b"");
    assert!(!listed.contains("nightly"), "{listed}");
    let (status, _) = host.http("GET", &format!("/v1/savepoints/{location}"), globex, b"");
    assert_eq!(status, 404);
    // Through the CLI too: listed, inspected.
    let o = host.weir(&host.acme, &["savepoints"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&location));
    let o = host.weir(&host.acme, &["savepoints", "inspect", &location]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(shown.contains("count"), "{shown}");
    assert!(!shown.contains(dir.path().to_str().unwrap()), "{shown}");
    let o = host.weir(&host.globex, &["savepoints", "inspect", &location]);
    assert_eq!(o.status.code(), Some(2), "another tenant's: {}", stderr(&o));

    // Submissions: fields naming paths stay in the tenant's directory.
    let text = std::fs::read_to_string(&job).unwrap();
    let submit = |token: Option<&str>, job: &str, extra: &str| {
        let body = format!(
            "{{\"job\": {}{extra}}}",
            serde_json::to_string(job).unwrap()
        );
        host.http("POST", "/v1/jobs", token, body.as_bytes())
    };
    let (status, answer) = submit(acme, &text, "");
    assert_eq!(status, 400, "plugins named by path are refused: {answer}");
    assert!(answer.contains("operators[0].plugin"), "{answer}");
    let uploaded = |token, path: &str| {
        let (status, answer) =
            host.http("POST", "/v1/plugins", token, &std::fs::read(path).unwrap());
        assert!(status == 200 || status == 201, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        v["plugin"].as_str().unwrap().to_owned()
    };
    let hashed = text
        .replace(plugins::TOKENIZE, &uploaded(acme, plugins::TOKENIZE))
        .replace(plugins::WORD_COUNT, &uploaded(acme, plugins::WORD_COUNT));
    for (from, to, field) in [
        (
            "type = \"datagen\"",
            "type = \"file\"\npath = \"../../../../etc/passwd\"",
            "sources[0]",
        ),
        ("path = \"out\"", "path = \"/tmp/escape\"", "sinks[0].path"),
        (
            "[checkpoints]",
            "[checkpoints]\nstorage = \"/tmp/cp\"",
            "checkpoints.storage",
        ),
        (
            "name = \"counts\"",
            "name = \"counts\"\n[savepoints]\ndir = \"/tmp/sp\"",
            "savepoints.dir",
        ),
    ] {
        let (status, answer) = submit(acme, &hashed.replace(from, to), "");
        assert_eq!(status, 400, "{field}: {answer}");
        assert!(answer.contains(field), "{field}: {answer}");
    }
    // globex may not use acme's plugins, nor its savepoints.
    let (status, answer) = submit(globex, &hashed, "");
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("not a plugin this tenant uploaded"),
        "{answer}"
    );
    // Its own job does not fit the host beside acme's: 503, naming the
    // limit, and nothing runs.
    let o = host.weir(&host.globex, &["submit", job.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("503"), "{}", stderr(&o));
    assert!(stderr(&o).contains("max_mappings"), "{}", stderr(&o));
    let (_, listed) = host.http("GET", "/v1/jobs", globex, b"");
    assert!(!listed.contains("counts"), "{listed}");
    for restore in [location.as_str(), "../acme/savepoints/nightly", "/etc"] {
        let (status, answer) = submit(acme, &hashed, &format!(", \"restore\": \"{restore}\""));
        if restore == location {
            // acme's own savepoint: refused only by the quota.
            assert_eq!(status, 403, "{answer}");
            assert!(answer.contains("running_jobs"), "{answer}");
        } else {
            assert!(status == 400 || status == 404, "{restore}: {answer}");
        }
    }
    // Malformed, oversized, not a component, an ungranted import.
    let (status, _) = host.http("POST", "/v1/jobs", acme, b"{\"job\": ");
    assert_eq!(status, 400);
    let (status, _) = host.http("POST", "/v1/jobs", acme, &vec![b' '; 4 << 20]);
    assert_eq!(status, 413);
    let (status, _) = host.http("POST", "/v1/plugins", acme, &vec![0u8; 33 << 20]);
    assert_eq!(status, 413);
    let (status, answer) = host.http("POST", "/v1/plugins", acme, b"\0asm\x01\0\0\0");
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("core WebAssembly module"), "{answer}");
    let (status, answer) = host.http(
        "POST",
        "/v1/plugins",
        acme,
        &std::fs::read(plugins::WASI_KV).unwrap(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("wasi:keyvalue/store"), "{answer}");

    // The running job, then cancel and delete it.
    let (status, _) = host.http("POST", &format!("/v1/jobs/{id}/cancel"), acme, b"");
    assert_eq!(status, 202);
    host.wait_state(&host.acme, &id, "CANCELED");
    let (status, _) = host.http("DELETE", &format!("/v1/jobs/{id}"), acme, b"");
    assert_eq!(status, 204);
    let (status, _) = host.http("GET", &format!("/v1/jobs/{id}"), acme, b"");
    assert_eq!(status, 404);
}

/// A hosted job of one `hostile` operator in `mode` over a few generated
/// records, with `limits` for the operator.
fn hostile_job(dir: &Path, mode: &str, limits: &str) -> PathBuf {
    let text = format!(
        r#"
name = "hostile-{name}"

[[sources]]
uid = "words"
type = "datagen"
records = 100
rate = 50

[[operators]]
uid = "hostile"
plugin = "{plugin}"
config = "{mode}"
input = "words"
{limits}

[[sinks]]
uid = "out"
type = "blackhole"
input = "hostile"
"#,
        name = mode.replace(':', "-"),
        plugin = plugins::HOSTILE,
    );
    let path = dir.join(format!("hostile-{}.toml", mode.replace(':', "-")));
    std::fs::write(&path, text).unwrap();
    path
}

/// The host process's peak resident memory, from /proc.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn hostile_jobs_of_one_tenant_fail_naming_their_limit_while_the_other_counts_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(&dir.path().join("ref"));
    let host = Serve::start(
        dir.path(),
        "[tenants.quota]\nmemory_mb = 512\ninstance_memory_mb = 128\nstate_mb = 64\n\
         fuel_per_call = 1000000000000\nrunning_jobs = 10",
    );
    let honest = host.submit(
        &host.globex,
        &counts_job(dir.path(), "job.toml", plugins::WORD_COUNT, 20_000),
    );
    let attacks = [
        (
            "spin",
            "limits = { fuel_per_call = 2000000000 }",
            "exceeded its CPU budget",
        ),
        (
            "spin",
            "limits = { fuel_per_call = 1000000000000, call_timeout_ms = 300 }",
            "ran longer than its wall-clock bound of 300 ms",
        ),
        ("recurse", "", "stack overflow"),
        ("hold:200", "", "memory"),
        ("state-flood", "", "state"),
        ("emit-flood", "", "emit"),
    ];
    let mut ids = Vec::new();
    for (i, (mode, limits, reason)) in attacks.iter().enumerate() {
        let sub = dir.path().join(format!("attack-{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        ids.push((
            host.submit(&host.acme, &hostile_job(&sub, mode, limits)),
            *mode,
            *reason,
        ));
    }
    for (id, mode, reason) in &ids {
        let record = host.wait_record(&host.acme, id, "FAILED");
        let failure = record["failure"].as_str().unwrap_or_default();
        assert!(
            failure.contains(reason),
            "{mode}: `{reason}` not in: {failure}"
        );
        assert!(!failure.contains("weir-data"), "a host path: {failure}");
    }
    host.wait_state(&host.globex, &honest, "FINISHED");
    assert_exactly_once(&host.files(&host.globex).join("out"), &reference);
    let (status, _) = host.http("GET", "/healthz", None, b"");
    assert_eq!(status, 200, "the host is up");
    let peak = peak_rss_bytes(host.child.id());
    assert!(peak < 3 << 29, "the host's peak RSS is {} MiB", peak >> 20);
}

#[test]
fn a_token_is_revoked_and_another_added_by_reloading_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let host = Serve::start(dir.path(), "");
    let old = host.acme.token.clone();
    let (status, _) = host.http("GET", "/v1/jobs", Some(&old), b"");
    assert_eq!(status, 200);
    let (new, new_hash) = weir_host::serve::config::new_token();
    let config_path = dir.path().join("host.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let old_hash = format!(
        "sha256:{}",
        weir_host::serve::config::token_hash(&old)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert!(config.contains(&old_hash));
    // A config that does not validate changes nothing.
    std::fs::write(&config_path, config.replace(&old_hash, "hunter2")).unwrap();
    hup(&host);
    let (status, _) = host.http("GET", "/v1/jobs", Some(&old), b"");
    assert_eq!(status, 200, "a bad config keeps the one in force");
    assert!(host.log().contains("not reloaded"), "{}", host.log());
    std::fs::write(&config_path, config.replace(&old_hash, &new_hash)).unwrap();
    hup(&host);
    let started = Instant::now();
    while host.http("GET", "/v1/jobs", Some(&old), b"").0 != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = host.http("GET", "/v1/jobs", Some(&new), b"");
    assert_eq!(status, 200);
}

/// Sends SIGHUP to the host and gives it a moment to reload.
fn hup(host: &Serve) {
    // SAFETY: signalling a child process we own.
    let r = unsafe { libc::kill(host.child.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(r, 0);
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn the_job_holding_most_storage_fails_once_its_tenant_is_over_storage_mb() {
    let dir = tempfile::tempdir().unwrap();
    let host = Serve::start(dir.path(), "[tenants.quota]\nstorage_mb = 1");
    // 200,000 distinct words: each checkpoint holds several MiB of counts.
    let text = std::fs::read_to_string(counts_job(
        dir.path(),
        "big.toml",
        plugins::WORD_COUNT,
        50_000,
    ))
    .unwrap()
    .replace("vocabulary = 300", "vocabulary = 200000")
    .replace(&format!("records = {RECORDS}"), "records = 100000000");
    let big = dir.path().join("big.toml");
    std::fs::write(&big, text).unwrap();
    let id = host.submit(&host.acme, &big);
    let other = host.submit(
        &host.globex,
        &counts_job(dir.path(), "small.toml", plugins::WORD_COUNT, 2_000),
    );
    let record = host.wait_record(&host.acme, &id, "FAILED");
    let failure = record["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("quota `storage_mb` (1)"), "{record}");
    // Its checkpoints are kept, and acme can submit nothing more.
    let checkpoints = host
        .dir
        .join("weir-data/storage/tenants/acme/jobs")
        .join(&id)
        .join("checkpoints/counts");
    assert!(
        std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some()),
        "{}",
        checkpoints.display()
    );
    let body = serde_json::json!({ "job": "name = \"x\"" }).to_string();
    let (status, answer) = host.http("POST", "/v1/jobs", Some(&host.acme.token), body.as_bytes());
    assert!(status == 400 || status == 403, "{answer}");
    // The other tenant is untouched.
    assert_eq!(host.state(&host.globex, &other), "RUNNING");
}

#[test]
fn a_hosted_plugin_importing_filesystem_and_sockets_is_denied_both() {
    let dir = tempfile::tempdir().unwrap();
    let host = Serve::start(dir.path(), "");
    let files = host.files(&host.acme);
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("in.txt"), "one record\n").unwrap();
    // A secret beside the tenant's files, and the host's own config.
    std::fs::write(files.join("secret"), "tenant data").unwrap();
    let job = dir.path().join("probe.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"probe\"\n[[sources]]\nuid = \"in\"\ntype = \"file\"\npath = \"in.txt\"\n\
             [[operators]]\nuid = \"prober\"\nplugin = \"{}\"\nconfig = \"probe\"\ninput = \"in\"\n\
             [[sinks]]\nuid = \"out\"\ntype = \"file\"\npath = \"probe-out\"\ninput = \"prober\"\n",
            plugins::FAULTY
        ),
    )
    .unwrap();
    let id = host.submit(&host.acme, &job);
    host.wait_state(&host.acme, &id, "FINISHED");
    let report = super::probe_report(super::output_lines(&files.join("probe-out")));
    assert!(report["read-dir"].starts_with("denied"), "{report:?}");
    assert!(report["read-file"].starts_with("denied"), "{report:?}");
    assert!(report["tcp-connect"].starts_with("denied"), "{report:?}");
    assert_eq!(report["env-vars"], "0", "{report:?}");
}
