//! Operators in other languages: the same contract, the same results.

use super::*;

#[test]
fn python_word_count_matches_rust_at_parallelism_1_and_2() {
    assert_word_count_matches_rust(plugins::PY_WORD_COUNT, "Python", 20_000);
}

/// The Python SDK's unit tests (`guest-sdk/python/tests`: declarations,
/// typed dataclass state and its evolution) run under the host's Python
/// against stand-ins for the bindings componentize-py generates.
#[test]
fn python_sdk_unit_tests_pass() {
    python_unit_tests_pass("guest-sdk/python", "tests", 5);
}

/// The Nexmark plugin's own tests, against the same stand-ins.
#[test]
fn python_nexmark_plugin_unit_tests_pass() {
    python_unit_tests_pass("plugins/python/nexmark", ".", 10);
}

/// Runs `python3 -B -m unittest discover -s START` in `dir` (under the
/// workspace) and checks at least `min` tests ran and all passed.
fn python_unit_tests_pass(dir: &str, start: &str, min: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir);
    let python = std::env::var_os("WEIR_PYTHON").unwrap_or_else(|| "python3".into());
    let o = Command::new(python)
        .current_dir(&dir)
        // No bytecode cache: one in a plugin folder reruns the plugin
        // build script.
        .args(["-B", "-m", "unittest", "discover", "-v", "-s", start])
        .output()
        .expect("python3 runs (the plugin build needs it too)");
    // unittest reports on stderr.
    let report = stderr(&o);
    assert!(o.status.success(), "{report}");
    let ran = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= min, "{ran} tests ran:\n{report}");
    assert!(report.trim_end().ends_with("OK"), "{report}");
}

#[test]
fn a_python_exception_fails_the_job_with_its_message_and_the_uid() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugins::PY_WORD_COUNT;
    let o = run_single_operator(dir.path(), "hello\n", "count", plugin, "config = \"raise\"");
    assert_operator_failure(&o, "count", plugin, "ValueError: cannot count 'hello'");
}

#[test]
fn a_job_mixing_rust_python_and_javascript_operators_runs() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(2_000, 500);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let out = dir.path().join("out");
    let job = format!(
        r#"
name = "mixed"
parallelism = 2

[[sources]]
uid = "lines"
type = "file"
path = "{input}"
parallelism = 1

[[operators]]
uid = "tokenize"
plugin = "{rust}"
input = "lines"
partition = "rebalance"

[[operators]]
uid = "count"
plugin = "{python}"
input = "tokenize"
partition = "hash"

[[operators]]
uid = "format"
plugin = "{javascript}"
input = "count"

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "format"
"#,
        input = input.display(),
        out = out.display(),
        rust = plugins::TOKENIZE,
        python = plugins::PY_WORD_COUNT,
        javascript = plugins::JS_FORMAT,
    );
    let o = run_job(dir.path(), &job);
    assert!(o.status.success(), "{}", stderr(&o));

    // Every word once per occurrence, as `word: n` with n counting up.
    let lines = output_lines(&out);
    assert_eq!(lines.len(), text.split_whitespace().count());
    let mut last: HashMap<String, u64> = HashMap::new();
    for line in &lines {
        let (word, n) = line.split_once(": ").expect("`word: count` lines");
        let n: u64 = n.parse().unwrap();
        let prev = last.insert(word.to_owned(), n).unwrap_or(0);
        assert_eq!(n, prev + 1, "counts of `{word}` out of order");
    }
    assert_eq!(last, reference_counts(&text));
}

/// Distinct words the Rust word count's savepoint holds (at least).
const RESTORED_KEYS: usize = 100_000;
/// The generated words: `w0 .. w{VOCABULARY - 1}`.
const VOCABULARY: usize = 105_000;

/// A Rust word count over generated words, stopped with a savepoint once
/// it holds at least [`RESTORED_KEYS`] keys: the savepoint's path and
/// every restored count.
fn rust_savepoint_with_100k_keys(dir: &Path) -> (String, HashMap<String, u64>) {
    let job = dir.join("rust.toml");
    std::fs::write(
        &job,
        format!(
            r#"
name = "swap"
parallelism = 1

[[sources]]
uid = "words"
type = "datagen"
seed = 5
vocabulary = {VOCABULARY}
words_per_record = 10

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
uid = "rust-sink"
type = "blackhole"
input = "count"

[checkpoints]
interval = "1s"
storage = "{storage}"

[savepoints]
dir = "savepoints"
"#,
            tokenize = plugins::TOKENIZE,
            count = plugins::WORD_COUNT,
            storage = dir.join("rust-checkpoints").display(),
        ),
    )
    .unwrap();
    let savepoints = dir.join("savepoints");
    let r = super::savepoints::Running::start(&job, &[]);
    // Savepoints until one holds enough keys: the unbounded source runs
    // flat out, so the first one usually does.
    for attempt in 0.. {
        assert!(
            attempt < 300,
            "no savepoint held {RESTORED_KEYS} keys in 300 tries"
        );
        let sp = super::savepoints::last_line(&r.ctl(&[
            "savepoint",
            &r.id,
            savepoints.to_str().unwrap(),
        ]));
        if state_keys(&sp) >= RESTORED_KEYS {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let sp = r.stop(&savepoints);
    assert!(state_keys(&sp) >= RESTORED_KEYS);
    let o = weir(&["savepoint", "inspect", &sp, "--dump", "count/count"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let counts = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_owned(),
                v["value"].as_u64().unwrap(),
            )
        })
        .collect();
    (sp, counts)
}

/// How many keys `count`'s state holds in savepoint `sp`.
fn state_keys(sp: &str) -> usize {
    let o = weir(&["savepoint", "inspect", sp]);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("state `count`  value int  ")?;
            rest.split(" keys").next()?.parse().ok()
        })
        // An early savepoint holds no `count` entries yet.
        .unwrap_or(0)
}

/// Restores a Rust word count's savepoint of at least 100,000 keys into
/// `plugin`'s word count, with the default limits, and runs it over a
/// file that touches a tenth of the keys, then every key: each word's
/// counts must go on from its restored count, each exactly once, through
/// checkpoints taken while many keys are dirty.
pub(super) fn assert_continues_a_100k_key_rust_savepoint(plugin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (sp, restored) = rust_savepoint_with_100k_keys(dir.path());
    assert!(restored.len() >= RESTORED_KEYS, "{} keys", restored.len());

    // A fraction of the keys first, then all of them (and the few the
    // savepoint does not hold, which start from zero).
    let words: Vec<String> = (0..VOCABULARY / 10)
        .chain(0..VOCABULARY)
        .map(|i| format!("w{i}"))
        .collect();
    let text: String = words.chunks(10).map(|line| line.join(" ") + "\n").collect();
    let input = dir.path().join("words.txt");
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("out");
    let job = dir.path().join("restored.toml");
    std::fs::write(
        &job,
        format!(
            r#"
name = "swap"
parallelism = 1

[[sources]]
uid = "lines"
type = "file"
path = "{input}"

[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "lines"

[[operators]]
uid = "count"
plugin = "{plugin}"
input = "tokenize"
partition = "hash"

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "count"

[checkpoints]
interval = "100ms"
storage = "{storage}"
"#,
            input = input.display(),
            tokenize = plugins::TOKENIZE,
            out = out.display(),
            storage = dir.path().join("checkpoints").display(),
        ),
    )
    .unwrap();
    // -n: the Rust job's source and sink are not in this one.
    let o = weir_with_env(
        &["run", "--quiet", job.to_str().unwrap(), "-s", &sp, "-n"],
        &[("WEIR_LOG", "info")],
    );
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.lines().any(|l| l.contains("checkpoint ")
            && l.contains(" completed in ")
            && !l.contains("(final)")),
        "no checkpoint completed while running:\n{log}"
    );

    // Per word, its counts in output order: restored + 1, restored + 2, …
    let mut seen: HashMap<String, u64> = HashMap::new();
    let lines = output_lines(&out);
    assert_eq!(lines.len(), words.len(), "one output record per word");
    for line in &lines {
        let (word, n) = line.split_once('\t').expect("key<TAB>value");
        let n: u64 = n.parse().unwrap();
        let last = seen
            .entry(word.to_owned())
            .or_insert_with(|| restored.get(word).copied().unwrap_or(0));
        assert_eq!(n, *last + 1, "`{word}` counted out of order or twice");
        *last = n;
    }
    assert_eq!(seen.len(), VOCABULARY);
}

#[test]
fn a_100k_key_rust_savepoint_continues_in_rust() {
    assert_continues_a_100k_key_rust_savepoint(plugins::WORD_COUNT);
}

#[test]
fn a_100k_key_rust_savepoint_continues_in_python_with_the_default_limits() {
    assert_continues_a_100k_key_rust_savepoint(plugins::PY_WORD_COUNT);
}
