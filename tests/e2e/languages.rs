//! Operators in other languages: the same contract, the same results.

use super::*;

/// Every output line of a file sink, sorted: equal for two runs that emit
/// the same records, whatever the interleaving between subtasks.
fn sorted_lines(dir: &Path) -> Vec<String> {
    let mut lines = output_lines(dir);
    lines.sort();
    lines
}

#[test]
fn python_word_count_matches_rust_at_parallelism_1_and_2() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(20_000, 3_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    for parallelism in [1, 2] {
        let rust_out = dir.path().join(format!("rust-{parallelism}"));
        let o = run_job(dir.path(), &wordcount_job(&input, &rust_out, parallelism));
        assert!(o.status.success(), "{}", stderr(&o));
        let py_out = dir.path().join(format!("python-{parallelism}"));
        let job = wordcount_job(&input, &py_out, parallelism)
            .replace(plugins::WORD_COUNT, plugins::PY_WORD_COUNT);
        let o = run_job(dir.path(), &job);
        assert!(o.status.success(), "{}", stderr(&o));
        let rust = sorted_lines(&rust_out);
        assert_eq!(rust.len(), 200_000);
        assert!(
            rust == sorted_lines(&py_out),
            "parallelism {parallelism}: Python output differs from Rust"
        );
        assert_eq!(read_counts(&py_out).0, reference_counts(&text));
    }
}

#[test]
fn a_python_exception_fails_the_job_with_its_message_and_the_uid() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello world\n").unwrap();
    let job = wordcount_job(&input, &dir.path().join("out"), 1).replace(
        &format!("plugin = \"{}\"", plugins::WORD_COUNT),
        &format!(
            "plugin = \"{}\"\nconfig = \"raise\"",
            plugins::PY_WORD_COUNT
        ),
    );
    let o = run_job(dir.path(), &job);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("operator `count`"), "{err}");
    assert!(err.contains("ValueError: cannot count 'hello'"), "{err}");
}
