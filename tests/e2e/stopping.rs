//! Stopping with a savepoint and resuming it, end to end: a suspend-stop
//! closes no operator and commits nothing after the savepoint's barrier, a
//! restore never retracts committed output, and a job whose bounded source
//! ended keeps taking checkpoints, savepoints and stops while its
//! unbounded one runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::savepoints::{Running, last_line};
use super::{output_lines, stderr, weir};
use weir_test_plugins as plugins;

/// `weir run JOB` in the background, accepting savepoints under
/// `savepoints/` beside the job file, where every test here writes them.
fn start(job: &Path) -> Running {
    let root = job.with_file_name("savepoints");
    Running::start(job, &["--savepoint-root", root.to_str().unwrap()])
}

/// Polls `f` every 20 ms until it returns something, for up to a minute.
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "waited a minute for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The visible (committed) part files of a file sink's directory, with
/// their bytes.
fn committed_parts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// Every line of a sink's output, counted (none before the sink made its
/// directory).
fn line_counts(dir: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    if !dir.exists() {
        return counts;
    }
    for line in output_lines(dir) {
        *counts.entry(line).or_default() += 1;
    }
    counts
}

/// `datagen` (`records`, `rate` as given, e.g. `rate = 2000`) → `op`
/// (the faulty plugin, `close` emitting `closed`) at parallelism 2 → a
/// file sink at parallelism 2, with checkpoints every 200 ms.
fn close_emitting_job(dir: &Path, name: &str, rate: &str) -> PathBuf {
    let text = format!(
        r#"
name = "closing"

[[sources]]
uid = "gen"
type = "datagen"
seed = 5
vocabulary = 100000
words_per_record = 2
records = 20000
{rate}

[[operators]]
uid = "op"
plugin = "{faulty}"
config = "emit-on-close"
input = "gen"
parallelism = 2

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "op"
parallelism = 2

[checkpoints]
interval = "200ms"
storage = "{storage}"
"#,
        faulty = plugins::FAULTY,
        out = dir.join("out").display(),
        storage = dir.join("checkpoints").display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_stop_without_drain_closes_nothing_and_resuming_keeps_every_committed_part() {
    let dir = tempfile::tempdir().unwrap();
    // The reference: the same job straight to its end; `close` emits
    // once per subtask, at the real end of the input.
    let reference_dir = dir.path().join("reference");
    std::fs::create_dir_all(&reference_dir).unwrap();
    let o = weir(&[
        "run",
        "--quiet",
        close_emitting_job(&reference_dir, "job.toml", "")
            .to_str()
            .unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = line_counts(&reference_dir.join("out"));
    assert_eq!(expected.get("closed"), Some(&2), "closed once per subtask");

    let out = dir.path().join("out");
    let slow = close_emitting_job(dir.path(), "slow.toml", "rate = 2000");
    let mut r = start(&slow);
    poll("a committed part", || {
        (!committed_parts(&out).is_empty()).then_some(())
    });
    r.wait_for_log("checkpoint 3 completed");
    let sp = r.stop(&dir.path().join("savepoints"));
    let stopped = committed_parts(&out);
    let lines = line_counts(&out);
    assert!(
        !lines.contains_key("closed"),
        "a stop without drain must not run `close`, nor commit what it emits"
    );
    let total: u64 = lines.values().sum();
    assert!(total < 20_000, "stopped midway: {total}");

    // Resumed from the stop's savepoint, at full speed to the end.
    let fast = close_emitting_job(dir.path(), "fast.toml", "");
    let o = weir(&["run", "--quiet", fast.to_str().unwrap(), "-s", &sp]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = committed_parts(&out);
    for (name, bytes) in &stopped {
        assert_eq!(
            after.get(name),
            Some(bytes),
            "committed part {name} kept, byte for byte"
        );
    }
    assert_eq!(line_counts(&out), expected, "exactly once");
}

/// A bounded `file` source (`lines`) and a `datagen` source (`gen`, set
/// up by `generator`): `lines` → `fin` → `out-f`, and the union of both →
/// `mix` → `out-m`; both operators are the faulty plugin, whose `close`
/// emits `closed`. Checkpoints every 200 ms.
fn mixed_job(dir: &Path, name: &str, generator: &str) -> PathBuf {
    let text = format!(
        r#"
name = "mixed"

[[sources]]
uid = "lines"
type = "file"
path = "{input}"

[[sources]]
uid = "gen"
type = "datagen"
seed = 9
vocabulary = 100000
words_per_record = 2
{generator}

[[operators]]
uid = "fin"
plugin = "{faulty}"
config = "emit-on-close"
input = "lines"

[[operators]]
uid = "mix"
plugin = "{faulty}"
config = "emit-on-close"
input = ["lines", "gen"]

[[sinks]]
uid = "out-f"
type = "file"
path = "{out_f}"
input = "fin"

[[sinks]]
uid = "out-m"
type = "file"
path = "{out_m}"
input = "mix"

[checkpoints]
interval = "200ms"
storage = "{storage}"
"#,
        input = dir.join("input.txt").display(),
        faulty = plugins::FAULTY,
        out_f = dir.join("out-f").display(),
        out_m = dir.join("out-m").display(),
        storage = dir.join("checkpoints").display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn savepoints_and_stops_go_on_after_a_bounded_source_ended_and_resume_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input: String = (0..300).map(|i| format!("file-line-{i}\n")).collect();
    std::fs::write(dir.path().join("input.txt"), &input).unwrap();
    let file_lines: BTreeMap<String, u64> = input.lines().map(|l| (l.to_owned(), 1)).collect();
    // What `gen` produces, bounded at 20,000 records.
    let reference = dir.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let text = std::fs::read_to_string(mixed_job(&reference, "job.toml", "records = 20000"))
        .unwrap()
        .replace("input = [\"lines\", \"gen\"]", "input = \"gen\"");
    std::fs::write(reference.join("job.toml"), text).unwrap();
    std::fs::write(reference.join("input.txt"), "").unwrap();
    let o = weir(&[
        "run",
        "--quiet",
        reference.join("job.toml").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut generated = line_counts(&reference.join("out-m"));
    assert_eq!(generated.remove("closed"), Some(1));

    let (out_f, out_m) = (dir.path().join("out-f"), dir.path().join("out-m"));
    let slow = mixed_job(dir.path(), "slow.toml", "rate = 1000");
    let r = start(&slow);
    // `fin` closed once `lines` ended, and a checkpoint after that
    // committed its output: checkpoints go on.
    poll("`fin`'s close output committed", || {
        line_counts(&out_f).contains_key("closed").then_some(())
    });
    let savepoints = dir.path().join("savepoints");
    let sp = last_line(&r.ctl(&["savepoint", &r.id, savepoints.to_str().unwrap()]));
    let inspect = weir(&["savepoint", "inspect", &sp]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    assert!(
        String::from_utf8_lossy(&inspect.stdout).contains(&format!("{} (ended)", input.len())),
        "the ended source's final position: {}",
        String::from_utf8_lossy(&inspect.stdout)
    );
    let stopped = r.stop(&savepoints);
    assert!(
        !line_counts(&out_m).contains_key("closed"),
        "`mix` still had a running input: not closed"
    );

    // Resumed with `gen` bounded: `lines` stays ended (nothing re-read,
    // `fin` not closed again), `gen` goes on from its position.
    let fast = mixed_job(dir.path(), "fast.toml", "records = 20000");
    let o = weir(&["run", "--quiet", fast.to_str().unwrap(), "-s", &stopped]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut expected_f = file_lines.clone();
    expected_f.insert("closed".into(), 1);
    assert_eq!(line_counts(&out_f), expected_f, "`fin`: exactly once");
    let mut expected_m = generated;
    expected_m.extend(file_lines);
    assert_eq!(expected_m.insert("closed".into(), 1), None);
    assert_eq!(line_counts(&out_m), expected_m, "`mix`: exactly once");
}

#[test]
fn an_input_file_shorter_than_the_restored_offset_fails_naming_file_offset_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, super::corpus(500_000, 20_000)).unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "{}\n[checkpoints]\ninterval = \"100ms\"\nstorage = \"{}\"\n",
            super::wordcount_job(&input, &dir.path().join("out"), 2),
            dir.path().join("checkpoints").display()
        ),
    )
    .unwrap();
    let mut r = start(&job);
    r.wait_for_log("checkpoint 1 completed");
    let sp = r.stop(&dir.path().join("savepoints"));
    let inspect = weir(&["savepoint", "inspect", &sp]);
    let report = String::from_utf8_lossy(&inspect.stdout).into_owned();
    let offset: u64 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("source splits  0/1 at "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a source offset mid-file: {report}"));
    assert!(offset > 0, "{report}");

    // The input shrank below the offset: a user error, not a silent end.
    let size = offset / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .unwrap()
        .set_len(size)
        .unwrap();
    let o = weir(&["run", "--quiet", job.to_str().unwrap(), "-s", &sp]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains(&input.display().to_string())
            && e.contains(&format!("offset {offset}"))
            && e.contains(&format!("{size} bytes")),
        "names the file, the offset and the size: {e}"
    );
}
