//! Savepoints end to end with the real binary: taken through the REST API
//! of a running job, stopped with, restored (moved, rescaled, into another
//! plugin or language, with operators added and removed), checked,
//! inspected, disposed of, claimed or not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{output_lines, stderr, weir};
use weir_test_plugins as plugins;

/// Records of every job here: the generated stream is a pure function of
/// the seed, so every run sees the same words.
const RECORDS: u64 = 40_000;

/// Word count over generated words: `words` (datagen) → `tokenize` →
/// `count` (`plugin`, behind a hash edge, at `parallelism`) → `out` (file
/// sink), with checkpoints every 200 ms.
fn job(dir: &Path, name: &str, plugin: &str, parallelism: u32, rate: u32) -> PathBuf {
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
parallelism = {parallelism}

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "count"
parallelism = {parallelism}

[checkpoints]
interval = "200ms"
storage = "{storage}"
"#,
        tokenize = plugins::TOKENIZE,
        out = dir.join("out").display(),
        storage = dir.join("checkpoints").display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A `weir run` in the background with its REST API on a free port.
pub(super) struct Running {
    child: Child,
    address: String,
    pub(super) id: String,
    log: PathBuf,
}

impl Drop for Running {
    /// A test that fails leaves no job behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    // The child is waited for by `stop`, or on drop.
    #[allow(clippy::zombie_processes)]
    pub(super) fn start(job: &Path, extra: &[&str]) -> Self {
        let log = job.with_extension(format!("{}.log", rand_suffix()));
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
        let mut args = vec!["run", "--quiet", job.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rest-address", "127.0.0.1:0"]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(&args)
            .env("WEIR_CACHE_DIR", cache)
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("weir starts");
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("REST API on ")) {
                let address = line
                    .rsplit("REST API on ")
                    .next()
                    .unwrap()
                    .trim()
                    .to_owned();
                let id = line
                    .split("(id ")
                    .nth(1)
                    .and_then(|r| r.split(')').next())
                    .unwrap()
                    .to_owned();
                return Running {
                    child,
                    address,
                    id,
                    log,
                };
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no REST API line; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `weir ARGS --address ADDRESS`, which must succeed; its stdout.
    pub(super) fn ctl(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--address", &self.address]);
        let o = weir(&all);
        assert!(o.status.success(), "weir {all:?}: {}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Stops the job with a savepoint under `dir`: the savepoint's path.
    pub(super) fn stop(mut self, dir: &Path) -> String {
        let printed = self.ctl(&["stop", &self.id, "--savepoint-path", dir.to_str().unwrap()]);
        let status = wait(&mut self.child, Duration::from_secs(60));
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert_eq!(status, Some(0), "stopped job's exit; log:\n{log}");
        last_line(&printed)
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub(super) fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    None
}

/// Runs `job` to the end (restoring with `args`), which must succeed.
fn run_to_end(job: &Path, args: &[&str]) {
    let mut all = vec!["run", "--quiet", job.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = weir(&all);
    assert!(o.status.success(), "weir {all:?}: {}", stderr(&o));
}

/// Per word, every count the output holds.
fn counts(out: &Path) -> HashMap<String, Vec<u64>> {
    let mut counts: HashMap<String, Vec<u64>> = HashMap::new();
    for line in output_lines(out) {
        let (word, n) = line.split_once('\t').unwrap();
        counts
            .entry(word.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    counts
}

/// The final count of every word of a straight run: the reference.
fn reference(dir: &Path) -> HashMap<String, u64> {
    let dir = dir.join("reference");
    std::fs::create_dir_all(&dir).unwrap();
    run_to_end(
        &job(&dir, "job.toml", plugins::WORD_COUNT, 2, 1_000_000),
        &[],
    );
    counts(&dir.join("out"))
        .into_iter()
        .map(|(w, c)| (w, c.len() as u64))
        .collect()
}

/// Every word counted 1..=n exactly once, n its reference count.
fn assert_exactly_once(out: &Path, reference: &HashMap<String, u64>) {
    let got = counts(out);
    assert_eq!(got.len(), reference.len(), "different words");
    for (word, seen) in got {
        let mut seen = seen;
        seen.sort_unstable();
        let n = reference[&word];
        assert_eq!(seen, (1..=n).collect::<Vec<_>>(), "word {word}");
    }
}

fn files_with_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn savepoints_stop_and_rescaled_restores_continue_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let expected = reference(dir.path());
    let savepoints = dir.path().join("savepoints");

    // Parallelism 1: a savepoint while running (detached, polled), then a
    // stop with savepoint.
    let job1 = job(dir.path(), "job1.toml", plugins::WORD_COUNT, 1, 10_000);
    let r = Running::start(&job1, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let listed = r.ctl(&["list"]);
    assert!(
        listed.contains(&r.id) && listed.contains("RUNNING"),
        "{listed}"
    );
    let request = last_line(&r.ctl(&[
        "savepoint",
        &r.id,
        savepoints.to_str().unwrap(),
        "--detached",
    ]));
    let started = Instant::now();
    let mid = loop {
        let status = r.ctl(&["savepoint", "status", &r.id, &request]);
        if status.contains("COMPLETED") {
            break last_line(&status);
        }
        assert!(!status.contains("FAILED"), "{status}");
        assert!(started.elapsed() < Duration::from_secs(60), "{status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(mid.contains("savepoint-counts-"), "{mid}");
    std::thread::sleep(Duration::from_millis(300));
    let stopped = r.stop(&savepoints);
    assert!(Path::new(&stopped).join("_metadata").is_file(), "{stopped}");
    let partial: usize = counts(&dir.path().join("out")).values().map(Vec::len).sum();
    assert!((partial as u64) < RECORDS, "stopped midway: {partial}");

    // The savepoint directory moves as a whole and still restores: at
    // parallelism 3, stopped again, then at 2 to the end.
    let moved = dir.path().join("moved-savepoint");
    std::fs::rename(&stopped, &moved).unwrap();
    let before = files_with_bytes(&moved);
    let job3 = job(dir.path(), "job3.toml", plugins::WORD_COUNT, 3, 10_000);
    let r = Running::start(&job3, &["-s", moved.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(800));
    let stopped3 = r.stop(&savepoints);
    let job2 = job(dir.path(), "job2.toml", plugins::WORD_COUNT, 2, 1_000_000);
    run_to_end(&job2, &["-s", &stopped3]);
    assert_exactly_once(&dir.path().join("out"), &expected);
    // no-claim (the default): the runs checkpointed and subsumed, and the
    // restored savepoint is untouched, byte for byte.
    assert_eq!(files_with_bytes(&moved), before);
}

#[test]
fn a_rust_count_continues_in_python_and_in_javascript() {
    for (language, plugin) in [
        ("python", plugins::PY_WORD_COUNT),
        ("javascript", plugins::JS_WORD_COUNT),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let expected = reference(dir.path());
        let rust = job(dir.path(), "rust.toml", plugins::WORD_COUNT, 2, 10_000);
        let r = Running::start(&rust, &[]);
        std::thread::sleep(Duration::from_millis(700));
        let sp = r.stop(&dir.path().join("savepoints"));
        let other = job(dir.path(), "other.toml", plugin, 2, 1_000_000);
        let check = weir(&["savepoint", "check", &sp, other.to_str().unwrap()]);
        assert!(check.status.success(), "{language}: {}", stderr(&check));
        run_to_end(&other, &["-s", &sp]);
        assert_exactly_once(&dir.path().join("out"), &expected);
    }
}

#[test]
fn removed_operators_need_n_and_new_ones_start_empty_and_claim_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = job(dir.path(), "v1.toml", plugins::WORD_COUNT, 2, 10_000);
    let r = Running::start(&v1, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let sp = r.stop(&dir.path().join("savepoints"));
    let parts_before = part_names(&dir.path().join("out"));

    // v2 renames `count`: its state has no operator, and `count2` is new.
    let text = std::fs::read_to_string(&v1)
        .unwrap()
        .replace("uid = \"count\"", "uid = \"count2\"")
        .replace("input = \"count\"", "input = \"count2\"")
        .replace("rate = 10000", "rate = 1000000");
    let v2 = dir.path().join("v2.toml");
    std::fs::write(&v2, text).unwrap();

    let check = weir(&["savepoint", "check", &sp, v2.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(2), "{}", stderr(&check));
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("dropped  `count`"), "{report}");
    assert!(report.contains("new      `count2`"), "{report}");

    let o = weir(&["run", "--quiet", v2.to_str().unwrap(), "-s", &sp]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("uids the job does not have: count"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("--allow-non-restored-state"),
        "{}",
        stderr(&o)
    );

    // With -n and claim: count2 starts from zero, and once the run's
    // checkpoints subsumed the savepoint it is deleted.
    let o = weir_log(&[
        "run",
        "--quiet",
        v2.to_str().unwrap(),
        "-s",
        &sp,
        "-n",
        "--claim-mode",
        "claim",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("dropping the state"), "{}", stderr(&o));
    // The parts the restored run wrote: count2's first count of every
    // word is 1.
    let mut first: HashMap<String, u64> = HashMap::new();
    for line in new_lines(&dir.path().join("out"), &parts_before) {
        let (word, n) = line.split_once('\t').unwrap();
        let n: u64 = n.parse().unwrap();
        let e = first.entry(word.to_owned()).or_insert(n);
        *e = (*e).min(n);
    }
    assert!(!first.is_empty());
    assert!(first.values().all(|&n| n == 1), "count2 started empty");
    assert!(
        !Path::new(&sp).exists(),
        "the claimed savepoint was deleted"
    );
}

/// The visible part files of a file sink's directory.
fn part_names(out: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("part-"))
        .collect()
}

/// The lines of the part files in `out` that are not in `before`: what a
/// restored run wrote.
fn new_lines(out: &Path, before: &std::collections::BTreeSet<String>) -> Vec<String> {
    part_names(out)
        .difference(before)
        .flat_map(|name| {
            std::fs::read_to_string(out.join(name))
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn weir_log(args: &[&str]) -> std::process::Output {
    super::weir_with_env(args, &[("WEIR_LOG", "info")])
}

#[test]
fn inspect_dump_check_and_dispose_without_running_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = job(dir.path(), "v1.toml", plugins::WORD_COUNT, 2, 10_000);
    let r = Running::start(&v1, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let sp = r.stop(&dir.path().join("savepoints"));
    let words = counts(&dir.path().join("out"));

    let o = weir(&["savepoint", "inspect", &sp]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("operator `count`  parallelism 2"), "{shown}");
    assert!(
        shown.contains(&format!("state `count`  value int  {} keys", words.len())),
        "{shown}"
    );
    assert!(shown.contains("source offsets"), "{shown}");

    let o = weir(&["savepoint", "inspect", &sp, "--dump", "count/count"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dumped: HashMap<String, u64> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_owned(),
                v["value"].as_u64().unwrap(),
            )
        })
        .collect();
    let finals: HashMap<String, u64> = words
        .iter()
        .map(|(w, c)| (w.clone(), *c.iter().max().unwrap()))
        .collect();
    assert_eq!(dumped, finals);
    let o = weir(&["savepoint", "inspect", &sp, "--dump", "count/nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no state `nope`"), "{}", stderr(&o));

    let rescaled = job(dir.path(), "v3.toml", plugins::WORD_COUNT, 3, 10_000);
    let o = weir(&["savepoint", "check", &sp, rescaled.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains("matched  `count`  parallelism 2 → 3"),
        "{report}"
    );
    assert!(report.contains("restore would succeed"), "{report}");

    // Dispose refuses what is not a savepoint, then deletes the savepoint.
    let o = weir(&[
        "savepoint",
        "dispose",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(dir.path().join("out").is_dir());
    let o = weir(&["savepoint", "dispose", &sp]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!Path::new(&sp).exists());
}

#[test]
fn a_version_1_savepoint_still_restores() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/savepoint-v1");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["savepoint", "out"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(fixture.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(sub).join(e.file_name())).unwrap();
        }
    }
    // The job that wrote it (tests/fixtures/savepoint-v1/README.md).
    let job = |out: &Path| {
        format!(
            r#"
name = "counts"
parallelism = 1

[[sources]]
uid = "words"
type = "datagen"
seed = 7
vocabulary = 500
records = 2000

[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "words"

[[operators]]
uid = "count"
plugin = "{count}"
input = "tokenize"
partition = "hash"

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "count"
"#,
            tokenize = plugins::TOKENIZE,
            count = plugins::WORD_COUNT,
            out = out.display(),
        )
    };
    let path = dir.path().join("job.toml");
    std::fs::write(&path, job(&dir.path().join("out"))).unwrap();
    let sp = dir.path().join("savepoint");
    run_to_end(&path, &["-s", sp.to_str().unwrap()]);

    let straight = dir.path().join("straight");
    std::fs::create_dir_all(&straight).unwrap();
    let path = straight.join("job.toml");
    std::fs::write(&path, job(&straight.join("out"))).unwrap();
    run_to_end(&path, &[]);
    let expected: HashMap<String, u64> = counts(&straight.join("out"))
        .into_iter()
        .map(|(w, c)| (w, c.len() as u64))
        .collect();
    assert_exactly_once(&dir.path().join("out"), &expected);
}

#[test]
fn a_stopped_v1_plugin_continues_as_v2_reading_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let job = |name: &str, plugin: &str, records: &str| {
        let text = format!(
            r#"
name = "sensors"
parallelism = 2

[[sources]]
uid = "readings"
type = "datagen"
seed = 3
rate = 2000.0
vocabulary = 10
words_per_record = 2
parallelism = 1
{records}

[[operators]]
uid = "by-sensor"
plugin = "{tokenize}"
config = "key-first"
input = "readings"

[[operators]]
uid = "sensors"
plugin = "{plugin}"
input = "by-sensor"
partition = "hash"

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "sensors"
"#,
            tokenize = plugins::TOKENIZE,
            out = dir.path().join("out").display(),
        );
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let v1 = job("v1.toml", plugins::HOT_SWAP_V1, "");
    let r = Running::start(&v1, &[]);
    std::thread::sleep(Duration::from_millis(800));
    let sp = r.stop(&dir.path().join("savepoints"));
    let before = part_names(&dir.path().join("out"));
    let mut last_v1: HashMap<String, u64> = HashMap::new();
    for line in output_lines(&dir.path().join("out")) {
        let (sensor, rest) = line.split_once('\t').unwrap();
        let n: u64 = rest.strip_prefix("count=").unwrap().parse().unwrap();
        let e = last_v1.entry(sensor.to_owned()).or_insert(n);
        *e = (*e).max(n);
    }
    assert!(!last_v1.is_empty());

    // Check reports the type evolution as compatible; v2 restores.
    let v2 = job("v2.toml", plugins::HOT_SWAP_V2, "records = 4000");
    let o = weir(&["savepoint", "check", &sp, v2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(report.contains("evolves to"), "{report}");
    run_to_end(&v2, &["-s", &sp]);

    // Every sensor's first v2 count is one past its last v1 count, and v2
    // reports means.
    let mut first_v2: HashMap<String, u64> = HashMap::new();
    for line in new_lines(&dir.path().join("out"), &before) {
        let (sensor, rest) = line.split_once('\t').unwrap();
        let (count, mean) = rest.split_once(" mean=").expect("v2 reports a mean");
        let n: u64 = count.strip_prefix("count=").unwrap().parse().unwrap();
        assert!(mean.parse::<f64>().is_ok(), "{line}");
        let e = first_v2.entry(sensor.to_owned()).or_insert(n);
        *e = (*e).min(n);
    }
    for (sensor, last) in &last_v1 {
        assert_eq!(first_v2.get(sensor), Some(&(last + 1)), "sensor {sensor}");
    }
}
