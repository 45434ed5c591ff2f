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
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk/python");
    let python = std::env::var_os("WEIR_PYTHON").unwrap_or_else(|| "python3".into());
    let o = Command::new(python)
        .current_dir(&sdk)
        .args(["-m", "unittest", "discover", "-v", "-s", "tests"])
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
    assert!(ran >= 5, "{ran} tests ran:\n{report}");
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
