//! End-to-end tests: the real `weir` binary on real Wasm plugins.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use weir_test_plugins as plugins;

mod checkpoints;
mod control;
mod event_time;
mod examples;
mod hostile;
mod javascript;
mod kafka;
mod languages;
mod nats;
mod savepoints;
mod serve;
mod stopping;

/// Runs `weir ARGS` with a plugin cache shared by all tests.
fn weir(args: &[&str]) -> Output {
    weir_with_env(args, &[])
}

/// Runs `weir ARGS` with extra environment variables (`WEIR_LOG=warn`
/// unless they set it). Every job's REST API takes a free port, so runs in
/// parallel never collide on the default one. A run that hangs is killed after five minutes and
/// fails the test, instead of stalling the suite.
fn weir_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_CACHE_DIR", cache)
        .env("WEIR_LOG", "warn")
        .env("WEIR_REST_ADDRESS", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir runs");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("reading weir's output");
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for weir") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(300) {
            child.kill().expect("killing a hung weir");
            child.wait().expect("reaping weir");
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!(
                "`weir {}` hung for 5 minutes; stderr:\n{err}",
                args.join(" ")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Whether the broker `binary` (a test's `test`) runs; where it does not,
/// a skip, unless `.ci/run` asked for brokers (`WEIR_TEST_REQUIRE_BROKERS`),
/// which makes it a failure saying how it is installed (`how`).
fn broker_installed(binary: &str, test: &str, how: &str) -> bool {
    let installed = Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("WEIR_TEST_REQUIRE_BROKERS").is_none(),
            "{test}: {binary} is not installed ({how})"
        );
        eprintln!("skipping {test}: {binary} is not installed");
    }
    installed
}

/// A loopback port nothing listens on (now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something takes connections on loopback `port` (`what`).
fn wait_listening(port: u16, what: &str) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_job(dir: &Path, job: &str) -> Output {
    let path = dir.join("job.toml");
    std::fs::write(&path, job).unwrap();
    weir(&["run", "--quiet", path.to_str().unwrap()])
}

/// A deterministic corpus of `lines` lines of 10 words from a vocabulary of
/// `vocabulary` made-up words.
fn corpus(lines: usize, vocabulary: usize) -> String {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words: Vec<String> = (0..vocabulary)
        .map(|i| {
            let len = 2 + (next() % 8) as usize;
            let w: String = (0..len)
                .map(|_| (b'a' + (next() % 26) as u8) as char)
                .collect();
            format!("{w}{i}")
        })
        .collect();
    let mut text = String::new();
    for _ in 0..lines {
        let line: Vec<&str> = (0..10)
            .map(|_| words[(next() % vocabulary as u64) as usize].as_str())
            .collect();
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    text
}

fn reference_counts(text: &str) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Every line of every visible part file in `dir` (hidden in-progress and
/// pending parts are not output), in part order: by subtask, then part
/// number, so each subtask's lines keep the order it wrote them.
/// The `faulty` plugin's `probe` report: one `name\tresult` line per
/// thing it tried.
fn probe_report<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> HashMap<String, String> {
    lines
        .into_iter()
        .map(|l| {
            let (k, v) = l.as_ref().split_once('\t').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn output_lines(dir: &Path) -> Vec<String> {
    let mut parts: Vec<((u64, u64), std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let (subtask, part) = name.strip_prefix("part-")?.split_once('-')?;
            Some(((subtask.parse().ok()?, part.parse().ok()?), path))
        })
        .collect();
    parts.sort();
    let mut lines = Vec::new();
    for (_, path) in parts {
        let text = std::fs::read_to_string(path).unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

/// Every output line of a file sink, sorted: equal for two runs that emit
/// the same records, whatever the interleaving between subtasks.
fn sorted_lines(dir: &Path) -> Vec<String> {
    let mut lines = output_lines(dir);
    lines.sort();
    lines
}

/// Runs the word-count job on a `lines × 10`-word corpus with the Rust
/// count and with `plugin` (another language's) at parallelism 1 and 2,
/// and checks both write the same records and the reference counts.
fn assert_word_count_matches_rust(plugin: &str, language: &str, lines: usize) {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(lines, 3_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    for parallelism in [1, 2] {
        let rust_out = dir.path().join(format!("rust-{parallelism}"));
        let o = run_job(dir.path(), &wordcount_job(&input, &rust_out, parallelism));
        assert!(o.status.success(), "{}", stderr(&o));
        let other_out = dir.path().join(format!("{language}-{parallelism}"));
        let job =
            wordcount_job(&input, &other_out, parallelism).replace(plugins::WORD_COUNT, plugin);
        let o = run_job(dir.path(), &job);
        assert!(o.status.success(), "{}", stderr(&o));
        let rust = sorted_lines(&rust_out);
        assert_eq!(rust.len(), lines * 10);
        assert!(
            rust == sorted_lines(&other_out),
            "parallelism {parallelism}: {language} output differs from Rust"
        );
        assert_eq!(read_counts(&other_out).0, reference_counts(&text));
    }
}

/// Reads `dir/part-*` of a word-count sink: the last count of each word,
/// checking that each word's counts go 1, 2, 3, … in order.
fn read_counts(dir: &Path) -> (HashMap<String, u64>, u64) {
    let mut last: HashMap<String, u64> = HashMap::new();
    let lines = output_lines(dir);
    for line in &lines {
        let (word, count) = line.split_once('\t').expect("key<TAB>value");
        let count: u64 = count.parse().unwrap();
        let prev = last.insert(word.to_owned(), count).unwrap_or(0);
        assert_eq!(count, prev + 1, "counts of `{word}` out of order");
    }
    (last, lines.len() as u64)
}

fn wordcount_job(input: &Path, out: &Path, parallelism: u32) -> String {
    format!(
        r#"
name = "wordcount"
parallelism = {parallelism}

[[sources]]
uid = "lines"
type = "file"
path = "{input}"
parallelism = 1

[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "lines"
partition = "rebalance"

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
        input = input.display(),
        out = out.display(),
        tokenize = plugins::TOKENIZE,
        count = plugins::WORD_COUNT,
    )
}

#[test]
fn word_count_over_a_million_words_matches_the_reference_at_parallelism_1_2_4() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(100_000, 20_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let expected = reference_counts(&text);
    let total: u64 = expected.values().sum();
    assert!(total >= 1_000_000);
    for parallelism in [1, 2, 4] {
        let out = dir.path().join(format!("out-{parallelism}"));
        let o = run_job(dir.path(), &wordcount_job(&input, &out, parallelism));
        assert!(
            o.status.success(),
            "parallelism {parallelism}: {}",
            stderr(&o)
        );
        let parts = std::fs::read_dir(&out).unwrap().count();
        assert_eq!(
            parts, parallelism as usize,
            "one output file per sink subtask"
        );
        let (counts, lines) = read_counts(&out);
        assert_eq!(lines, total, "one output record per input word");
        assert_eq!(counts, expected, "parallelism {parallelism}");
    }
}

#[test]
fn filter_drops_stop_words_and_stdout_sink_prints_records() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "the cat and the hat\na dog\n").unwrap();
    let job = format!(
        r#"
name = "filtered"
[[sources]]
uid = "lines"
type = "file"
path = "{input}"
[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "lines"
[[operators]]
uid = "stop"
plugin = "{filter}"
config = "the, a ,and"
input = "tokenize"
[[sinks]]
uid = "print"
type = "stdout"
input = "stop"
"#,
        input = input.display(),
        tokenize = plugins::TOKENIZE,
        filter = plugins::FILTER,
    );
    let o = run_job(dir.path(), &job);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "cat\tcat\nhat\that\ndog\tdog\n"
    );
}

#[test]
fn datagen_into_blackhole_runs_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let job = format!(
        r#"
name = "gen"
parallelism = 2
[[sources]]
uid = "gen"
type = "datagen"
seed = 1
records = 50000
vocabulary = 1000
words_per_record = 4
[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "gen"
[[operators]]
uid = "count"
plugin = "{count}"
input = "tokenize"
partition = "hash"
[[sinks]]
uid = "sink"
type = "blackhole"
input = "count"
"#,
        tokenize = plugins::TOKENIZE,
        count = plugins::WORD_COUNT,
    );
    let path = dir.path().join("job.toml");
    std::fs::write(&path, job).unwrap();
    // Not --quiet: the summary reports the counts.
    let o = weir(&["run", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = stderr(&o);
    let sink_line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("sink"))
        .unwrap();
    let numbers: Vec<u64> = sink_line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers, [200_000, 200_000], "{summary}");
}

/// A job reading `dir/in.txt` (holding `input`) through one operator into
/// a sink of `sink_type`; `extra` goes into the operator's table.
fn single_operator_job(
    dir: &Path,
    input: &str,
    uid: &str,
    plugin: &str,
    extra: &str,
    sink_type: &str,
) -> String {
    let path = dir.join("in.txt");
    std::fs::write(&path, input).unwrap();
    format!(
        r#"
name = "single"
[[sources]]
uid = "lines"
type = "file"
path = "{path}"
[[operators]]
uid = "{uid}"
plugin = "{plugin}"
input = "lines"
{extra}
[[sinks]]
uid = "sink"
type = "{sink_type}"
input = "{uid}"
"#,
        path = path.display(),
    )
}

/// Runs operator `uid` (`plugin`, with `extra` job lines) over `input`
/// into a blackhole.
fn run_single_operator(dir: &Path, input: &str, uid: &str, plugin: &str, extra: &str) -> Output {
    let job = single_operator_job(dir, input, uid, plugin, extra, "blackhole");
    run_job(dir, &job)
}

fn faulty_job(dir: &Path, mode: &str, limits: &str) -> Output {
    let extra = format!("config = \"{mode}\"\n{limits}");
    run_single_operator(dir, "some line\n", "bad-op", plugins::FAULTY, &extra)
}

/// Checks a run failed as a user error naming operator `uid`, its plugin
/// file and `needle`.
fn assert_operator_failure(o: &Output, uid: &str, plugin: &str, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "user error exit code: {err}");
    assert!(
        err.contains(&format!("operator `{uid}`")),
        "names the uid: {err}"
    );
    assert!(err.contains(plugin), "names the plugin file: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn a_trapping_plugin_fails_the_job_with_its_panic_message() {
    let dir = tempfile::tempdir().unwrap();
    let o = faulty_job(dir.path(), "trap", "");
    assert_operator_failure(&o, "bad-op", plugins::FAULTY, "trapped");
    let err = stderr(&o);
    assert!(err.contains("guest stderr: "), "{err}");
    assert!(err.contains("faulty plugin asked to trap"), "{err}");
    // The guest's stderr also reached the host log, tagged uid#subtask.
    assert!(
        err.lines()
            .any(|l| l.contains("[bad-op#0]") && l.contains("panicked")),
        "{err}"
    );
}

#[test]
fn a_plugin_has_no_ambient_authority() {
    let dir = tempfile::tempdir().unwrap();
    let job = single_operator_job(
        dir.path(),
        "one record\n",
        "prober",
        plugins::FAULTY,
        "config = \"probe\"",
        "stdout",
    );
    let path = dir.path().join("job.toml");
    std::fs::write(&path, job).unwrap();
    let o = weir_with_env(
        &["run", "--quiet", path.to_str().unwrap()],
        &[("WEIR_LOG", "info"), ("WEIR_SECRET", "must not leak")],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let report = probe_report(String::from_utf8_lossy(&o.stdout).lines());
    assert!(report["read-dir"].starts_with("denied"), "{report:?}");
    assert!(report["read-file"].starts_with("denied"), "{report:?}");
    assert_eq!(report["env-vars"], "0", "{report:?}");
    assert!(report["tcp-connect"].starts_with("denied"), "{report:?}");
    assert_eq!(report["clock-secs"], "0", "the clock is frozen: {report:?}");
    // Guest stdout and stderr go to the host log, tagged uid#subtask.
    assert!(
        err.contains("[prober#0] probe says hello on stdout"),
        "{err}"
    );
    assert!(
        err.contains("[prober#0] probe says hello on stderr"),
        "{err}"
    );
}

#[test]
fn an_infinite_loop_exhausts_the_cpu_budget() {
    let dir = tempfile::tempdir().unwrap();
    let o = faulty_job(dir.path(), "loop", "limits = { fuel_per_call = 50000000 }");
    assert_operator_failure(
        &o,
        "bad-op",
        plugins::FAULTY,
        "exceeded its CPU budget of 50000000 fuel per call",
    );
}

#[test]
fn a_memory_hog_hits_the_memory_cap() {
    let dir = tempfile::tempdir().unwrap();
    let o = faulty_job(dir.path(), "hog", "limits = { memory_mb = 32 }");
    assert_operator_failure(
        &o,
        "bad-op",
        plugins::FAULTY,
        "exceeded its memory limit of 32 MiB",
    );
}

#[test]
fn a_plugin_error_fails_the_job_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let o = faulty_job(dir.path(), "error", "");
    assert_operator_failure(
        &o,
        "bad-op",
        plugins::FAULTY,
        "returned an error: faulty plugin asked to fail",
    );
}

#[test]
fn keyed_state_behind_a_non_hash_edge_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, corpus(200, 50)).unwrap();
    let out = dir.path().join("out");
    let job =
        wordcount_job(&input, &out, 2).replace("partition = \"hash\"", "partition = \"rebalance\"");
    let o = run_job(dir.path(), &job);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("operator `count`"), "{err}");
    assert!(err.contains("not owned by this subtask"), "{err}");
}

#[test]
fn a_keyless_record_on_a_hash_edge_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a b\n").unwrap();
    let out = dir.path().join("out");
    let job = wordcount_job(&input, &out, 1).replace(
        "input = \"lines\"\npartition = \"rebalance\"",
        "input = \"lines\"\npartition = \"hash\"",
    );
    let o = run_job(dir.path(), &job);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("vertex `lines`: emitted a record without a key on a `hash` edge"),
        "{err}"
    );
}

mod bad_jobs {
    use super::*;

    fn validate(dir: &Path, job: &str) -> (Option<i32>, String) {
        let path = dir.join("job.toml");
        std::fs::write(&path, job).unwrap();
        let o = weir(&["validate", path.to_str().unwrap()]);
        (o.status.code(), stderr(&o))
    }

    fn good(dir: &Path) -> String {
        let input = dir.join("in.txt");
        std::fs::write(&input, "x\n").unwrap();
        wordcount_job(&input, &dir.join("out"), 2)
    }

    #[test]
    fn a_good_job_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, good(dir.path())).unwrap();
        let o = weir(&["validate", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("2 plugins compiled"));
    }

    #[test]
    fn unknown_field() {
        let dir = tempfile::tempdir().unwrap();
        let job = good(dir.path()).replace(
            "partition = \"hash\"",
            "partition = \"hash\"\nparalelism = 3",
        );
        let (code, err) = validate(dir.path(), &job);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("job.toml"), "{err}");
        assert!(err.contains("unknown field `paralelism`"), "{err}");
        assert!(err.contains("line 22"), "{err}");
    }

    #[test]
    fn duplicate_uid() {
        let dir = tempfile::tempdir().unwrap();
        let job = good(dir.path()).replace("uid = \"out\"", "uid = \"count\"");
        let (code, err) = validate(dir.path(), &job);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("sinks[0].uid: duplicate uid `count` (also operators[1].uid)"),
            "{err}"
        );
    }

    #[test]
    fn cycle() {
        let dir = tempfile::tempdir().unwrap();
        let job = good(dir.path()).replace("input = \"lines\"", "input = [\"lines\", \"count\"]");
        let (code, err) = validate(dir.path(), &job);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("cycle through tokenize, count"), "{err}");
    }

    #[test]
    fn missing_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let job = good(dir.path()).replace(plugins::WORD_COUNT, "/nowhere/count.wasm");
        let (code, err) = validate(dir.path(), &job);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("operators[1].plugin: plugin file /nowhere/count.wasm does not exist"),
            "{err}"
        );
    }

    #[test]
    fn plugin_that_is_not_a_component() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.wasm");
        std::fs::write(&text, "just text").unwrap();
        let module = dir.path().join("module.wasm");
        std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
        for (file, needle) in [
            (&text, "is not a WebAssembly component"),
            (&module, "is a core WebAssembly module, not a component"),
        ] {
            let job = good(dir.path()).replace(plugins::WORD_COUNT, file.to_str().unwrap());
            let (code, err) = validate(dir.path(), &job);
            assert_eq!(code, Some(2), "{err}");
            assert!(
                err.contains(&format!("operator `count`: plugin {}", file.display())),
                "{err}"
            );
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn every_failing_plugin_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.wasm");
        std::fs::write(&text, "just text").unwrap();
        let job = good(dir.path())
            .replace(plugins::WORD_COUNT, text.to_str().unwrap())
            .replace(plugins::TOKENIZE, text.to_str().unwrap());
        let (code, err) = validate(dir.path(), &job);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("job.toml: invalid job"), "{err}");
        assert!(err.contains("- operator `tokenize`: plugin "), "{err}");
        assert!(err.contains("- operator `count`: plugin "), "{err}");
    }

    #[test]
    fn a_component_that_does_not_export_the_operator_world() {
        // A real component, but not an operator: the SDK-less `faulty`
        // plugin is an operator, so use an empty component instead.
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.wasm");
        // The smallest valid component: header only.
        std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
        let job = good(dir.path()).replace(plugins::WORD_COUNT, empty.to_str().unwrap());
        let (code, err) = validate(dir.path(), &job);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("does not implement weir:operator/stream-operator@0.2.0 (nor weir:operator/stream-operator@0.1.0)"),
            "{err}"
        );
    }

    #[test]
    fn missing_job_file() {
        let (code, err) = {
            let o = weir(&["validate", "/nowhere/job.toml"]);
            (o.status.code(), stderr(&o))
        };
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("cannot read job file /nowhere/job.toml"),
            "{err}"
        );
    }
}
