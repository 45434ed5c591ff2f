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
    let plugin = plugins::JS_WORD_COUNT;
    let o = run_single_operator(dir.path(), "hello\n", "count", plugin, "config = \"throw\"");
    // Name, message, and the line of app.js that threw, from `process`.
    assert_operator_failure(&o, "count", plugin, "failed in `process`");
    assert_operator_failure(
        &o,
        "count",
        plugin,
        "Error: cannot count 'hello' (at app.js:",
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
    // Every test the file declares ran and passed: a file that failed to
    // load its tests would also report no failures.
    let declared = std::fs::read_to_string(sdk.join("test/weir.test.mjs"))
        .unwrap()
        .matches("\ntest(")
        .count();
    assert!(declared >= 10, "{declared} tests declared");
    assert!(out.contains(&format!("# pass {declared}\n")), "{out}");
}

#[test]
fn a_100k_key_rust_savepoint_continues_in_javascript_with_the_default_limits() {
    super::languages::assert_continues_a_100k_key_rust_savepoint(plugins::JS_WORD_COUNT);
}
