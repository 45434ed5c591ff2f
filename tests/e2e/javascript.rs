//! JavaScript operators (`guest-sdk/js`, built with componentize-js): the
//! same results as Rust, errors that name the operator, and the SDK's own
//! unit tests under Node.

use super::*;

#[test]
fn javascript_word_count_matches_rust_at_parallelism_1_and_2() {
    // Smaller than the Python test's corpus: the JavaScript engine
    // interprets, at roughly 0.04–0.1 M records/s.
    assert_word_count_matches_rust(plugins::JS_WORD_COUNT, "JavaScript", 5_000);
}

#[test]
fn a_javascript_error_fails_the_job_with_its_message_location_and_the_uid() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello world\n").unwrap();
    let job = wordcount_job(&input, &dir.path().join("out"), 1).replace(
        &format!("plugin = \"{}\"", plugins::WORD_COUNT),
        &format!(
            "plugin = \"{}\"\nconfig = \"throw\"",
            plugins::JS_WORD_COUNT
        ),
    );
    let o = run_job(dir.path(), &job);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("operator `count`"), "{err}");
    assert!(err.contains(plugins::JS_WORD_COUNT), "{err}");
    assert!(err.contains("failed in `process`"), "{err}");
    // Name, message, and the line of app.js that threw.
    assert!(
        err.contains("Error: cannot count 'hello' (at app.js:"),
        "{err}"
    );
}

/// The SDK's unit tests (`guest-sdk/js/test`: packed batches, the value
/// mapping, the state caches and flushes, error messages) run under Node
/// against an in-memory host.
#[test]
fn the_javascript_sdk_unit_tests_pass() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk/js");
    let node = std::env::var_os("WEIR_NODE").unwrap_or_else(|| "node".into());
    let o = Command::new(node)
        .current_dir(&sdk)
        .args([
            "--import",
            "./test/register.mjs",
            "--test",
            "test/weir.test.mjs",
        ])
        .output()
        .expect("node runs (the plugin build needs it too)");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("# fail 0"), "{out}");
}
