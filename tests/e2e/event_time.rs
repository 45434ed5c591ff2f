//! Event time end to end: watermarks from a source, timers and windows in
//! plugins, checked against the plain Nexmark reference queries, through
//! `kill -9`, a savepoint restored at another parallelism, and plugins
//! built against the 0.1.0 world.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_nexmark::{Event, GeneratorConfig, reference};

use super::checkpoints::run_through_kills;
use super::savepoints::Running;
use super::{plugins, run_job, sorted_lines, stderr};

/// The events of a bounded Nexmark source, in event-number order.
fn events(max_events: u64, events_per_second: u64) -> Vec<Event> {
    GeneratorConfig {
        max_events: Some(max_events),
        events_per_second,
        ..GeneratorConfig::default()
    }
    .events(0..max_events)
    .collect()
}

/// A job of a Nexmark source (`max_events` at `events_per_second` of
/// event time, emitted at `rate` per second when given) feeding the
/// queries in `queries` (their stages as `weir_nexmark::stages` gives
/// them, each query into a file sink `out-<query>`), checkpointing every
/// 100 ms into `dir/checkpoints`.
fn nexmark_job(
    dir: &Path,
    parallelism: u32,
    max_events: u64,
    events_per_second: u64,
    rate: Option<u32>,
    queries: &[&str],
) -> String {
    let rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default();
    let mut job = format!(
        r#"
name = "nexmark"
parallelism = {parallelism}

[checkpoints]
interval = "100ms"
storage = "{storage}"

[savepoints]
dir = "{savepoints}"

[[sources]]
uid = "events"
type = "nexmark"
{rate}
[sources.nexmark]
max_events = {max_events}
events_per_second = {events_per_second}

[sources.watermarks]
out_of_orderness_ms = 0
idle_timeout_ms = 1000
"#,
        storage = dir.join("checkpoints").display(),
        savepoints = dir.join("savepoints").display(),
    );
    let stage = |uid: &str, config: &str, input: &str, partition: &str| {
        format!(
            "\n[[operators]]\nuid = \"{uid}\"\nplugin = \"{plugin}\"\nconfig = \"{config}\"\ninput = \"{input}\"\npartition = \"{partition}\"\n",
            plugin = plugins::NEXMARK,
        )
    };
    for q in queries {
        let mut last = "events".to_owned();
        for (i, (config, partition)) in weir_nexmark::stages(q).unwrap().iter().enumerate() {
            let uid = format!("{q}-{i}");
            job += &stage(&uid, config, &last, partition);
            last = uid;
        }
        job += &format!(
            "\n[[sinks]]\nuid = \"out-{q}\"\ntype = \"file\"\npath = \"{out}\"\ninput = \"{last}\"\n",
            out = dir.join(format!("out-{q}")).display(),
        );
    }
    job
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_matches_reference(dir: &Path, query: &str, events: &[Event]) {
    let got = sorted_lines(&dir.join(format!("out-{query}")));
    let want = reference::expected(query, events).unwrap();
    assert!(!want.is_empty(), "{query}: the reference is empty");
    assert_eq!(got.len(), want.len(), "{query}: line count");
    assert!(got == want, "{query}: output differs from the reference");
}

#[test]
fn nexmark_q0_q1_q2_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_job(
        dir.path(),
        &nexmark_job(dir.path(), 2, 20_000, 10_000, None, &["q0", "q1", "q2"]),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let events = events(20_000, 10_000);
    for q in ["q0", "q1", "q2"] {
        assert_matches_reference(dir.path(), q, &events);
    }
}

#[test]
fn nexmark_q3_q4_q8_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    // 1,000 events per second of event time: 40 s, so four q8 windows.
    let (n, eps) = (40_000, 1_000);
    let o = run_job(
        dir.path(),
        &nexmark_job(dir.path(), 2, n, eps, None, &["q3", "q4", "q8"]),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let events = events(n, eps);
    assert_matches_reference(dir.path(), "q3", &events);
    assert_matches_reference(dir.path(), "q8", &events);

    // q4 emits an update per closed auction: the last one per category
    // (all from one subtask, in order) is the average over every auction,
    // as the final watermark closes them all.
    let updates = super::output_lines(&dir.path().join("out-q4"));
    let mut bid_times: HashMap<u64, Vec<i64>> = HashMap::new();
    for e in &events {
        if let Event::Bid(b) = e {
            bid_times.entry(b.auction).or_default().push(b.date_time);
        }
    }
    let counted = events
        .iter()
        .filter(|e| match e {
            Event::Auction(a) => bid_times
                .get(&a.id)
                .is_some_and(|ts| ts.iter().any(|t| (a.date_time..=a.expires).contains(t))),
            _ => false,
        })
        .count();
    assert_eq!(updates.len(), counted, "q4: one update per counted auction");
    let mut last = BTreeMap::new();
    for line in updates {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let category = value["category"].as_u64().expect("a category");
        last.insert(category, line);
    }
    let mut got: Vec<String> = last.into_values().collect();
    got.sort();
    let want = reference::q4_at(&events, i64::MAX);
    assert!(!want.is_empty(), "q4: the reference is empty");
    assert_eq!(got, want, "q4: final averages per category");
}

#[test]
fn nexmark_q5_and_q7_windows_survive_kill_9_exactly_once_at_parallelism_2() {
    let dir = tempfile::tempdir().unwrap();
    // 1,000 events per second of event time: 300 s, so 150 q5 windows
    // and 30 q7 windows, emitted over about 3 s of wall-clock time.
    let (n, eps) = (300_000, 1_000);
    let job = write(
        dir.path(),
        "job.toml",
        &nexmark_job(dir.path(), 2, n, eps, Some(100_000), &["q5", "q7"]),
    );
    run_through_kills(
        dir.path(),
        job.to_str().unwrap(),
        &dir.path().join("checkpoints/nexmark"),
        5,
        Duration::from_millis(400),
    );
    let events = events(n, eps);
    assert_matches_reference(dir.path(), "q5", &events);
    assert_matches_reference(dir.path(), "q7", &events);
}

#[test]
fn a_nexmark_savepoint_taken_mid_window_restores_at_parallelism_3_with_the_same_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (n, eps) = (200_000, 1_000);
    let p2 = write(
        dir.path(),
        "p2.toml",
        &nexmark_job(dir.path(), 2, n, eps, Some(50_000), &["q5", "q7"]),
    );
    let r = Running::start(&p2, &[]);
    // Mid-run, whatever the machine's load: a few checkpoints in.
    let job_dir = dir.path().join("checkpoints/nexmark");
    let started = std::time::Instant::now();
    while super::checkpoints::newest_in(&job_dir) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sp = r.stop(&dir.path().join("savepoints"));
    let shown = super::weir(&["savepoint", "inspect", &sp]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("_weir/timers/event-time"),
        "the savepoint holds the windows' timers:\n{shown}"
    );
    let p3 = write(
        dir.path(),
        "p3.toml",
        &nexmark_job(dir.path(), 3, n, eps, None, &["q5", "q7"]),
    );
    let o = super::weir(&["run", "--quiet", p3.to_str().unwrap(), "-s", &sp]);
    assert!(o.status.success(), "{}", stderr(&o));
    let events = events(n, eps);
    assert_matches_reference(dir.path(), "q5", &events);
    assert_matches_reference(dir.path(), "q7", &events);
}

#[test]
fn plugins_built_against_0_1_0_still_run() {
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/plugins-v0.1.0");
    let dir = tempfile::tempdir().unwrap();
    let text = super::corpus(2_000, 300);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let out = dir.path().join("out");
    let job = super::wordcount_job(&input, &out, 2)
        .replace(
            plugins::TOKENIZE,
            fixtures.join("weir_plugin_tokenize.wasm").to_str().unwrap(),
        )
        .replace(
            plugins::WORD_COUNT,
            fixtures
                .join("weir_plugin_word_count.wasm")
                .to_str()
                .unwrap(),
        );
    assert!(job.contains("plugins-v0.1.0/weir_plugin_word_count.wasm"));
    let o = run_job(dir.path(), &job);
    assert!(o.status.success(), "{}", stderr(&o));
    let (counts, _) = super::read_counts(&out);
    assert_eq!(counts, super::reference_counts(&text));
}

/// Nexmark bids keyed by bidder into window operator `plugin` (uid
/// `windows`, `config`), into the file sink `out`.
fn windows_job(dir: &Path, out: &str, plugin: &str, config: &str, rate: Option<u32>) -> String {
    let rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default();
    format!(
        r#"
name = "windows"
parallelism = 2

[checkpoints]
interval = "200ms"
storage = "{storage}"

[savepoints]
dir = "{savepoints}"

[[sources]]
uid = "events"
type = "nexmark"
{rate}
[sources.nexmark]
max_events = 30000
events_per_second = 500

[sources.watermarks]
out_of_orderness_ms = 0

[[operators]]
uid = "key"
plugin = "{nexmark}"
config = "bids-by-bidder"
input = "events"
partition = "forward"

[[operators]]
uid = "windows"
plugin = "{plugin}"
config = '{config}'
input = "key"
partition = "hash"

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "windows"
"#,
        storage = dir.join("checkpoints").display(),
        savepoints = dir.join("savepoints").display(),
        nexmark = plugins::NEXMARK,
        out = dir.join(out).display(),
    )
}

/// Windows of the Rust operator, stopped with a savepoint mid-run and
/// continued by `plugin` (another language's operator with the same
/// windows), equal those of a straight Rust run.
fn windows_continue_in(plugin: &str, config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let straight = write(
        dir.path(),
        "straight.toml",
        &windows_job(dir.path(), "straight", plugins::WINDOW_COUNT, config, None),
    );
    let o = super::weir(&["run", "--quiet", straight.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = sorted_lines(&dir.path().join("straight"));
    assert!(expected.len() > 100, "{} windows", expected.len());

    let rust = write(
        dir.path(),
        "rust.toml",
        &windows_job(
            dir.path(),
            "out",
            plugins::WINDOW_COUNT,
            config,
            Some(15_000),
        ),
    );
    let r = Running::start(&rust, &[]);
    std::thread::sleep(Duration::from_millis(1_000));
    let sp = r.stop(&dir.path().join("savepoints"));
    let continued = write(
        dir.path(),
        "other.toml",
        &windows_job(dir.path(), "out", plugin, config, None),
    );
    let o = super::weir(&["run", "--quiet", continued.to_str().unwrap(), "-s", &sp]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = sorted_lines(&dir.path().join("out"));
    assert_eq!(got.len(), expected.len(), "window count");
    assert!(
        got == expected,
        "the windows differ from a straight Rust run"
    );
}

#[test]
fn a_session_window_in_python_restores_from_the_rust_ones_savepoint() {
    windows_continue_in(plugins::PY_SESSION_COUNT, r#"{"gap": 3000}"#);
}

#[test]
fn a_tumbling_window_in_javascript_restores_from_the_rust_ones_savepoint() {
    windows_continue_in(plugins::JS_TUMBLING_COUNT, r#"{"size": 10000}"#);
}

#[test]
fn processing_time_timers_fire_on_the_host_clock_and_event_time_ends_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // 20,000 one-word records over about two seconds: a key's count is
    // reported 200 ms after its first record, the rest at the end.
    let job = format!(
        r#"
name = "processing-time"
parallelism = 2

[[sources]]
uid = "words"
type = "datagen"
records = 20000
rate = 10000
vocabulary = 50

[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "words"
partition = "rebalance"

[[operators]]
uid = "count"
plugin = "{count}"
config = "200"
input = "tokenize"
partition = "hash"

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "count"
"#,
        tokenize = plugins::TOKENIZE,
        count = plugins::PROCESSING_COUNT,
        out = out.display(),
    );
    let o = run_job(dir.path(), &job);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = sorted_lines(&out);
    let mut total = 0;
    let mut by_timer = 0;
    for line in &lines {
        let (_, report) = line.split_once('\t').unwrap();
        let (why, n) = report.split_once(',').unwrap();
        let n: u64 = n.parse().unwrap();
        total += n;
        match why {
            "timer" => by_timer += 1,
            "end" => {}
            other => panic!("unexpected report `{other}`"),
        }
    }
    assert_eq!(total, 20_000, "every record counted once");
    assert!(
        by_timer >= 50,
        "{by_timer} reports by processing-time timers"
    );
}
