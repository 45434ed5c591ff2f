//! The examples' scripts, run with stand-ins for rustup and cargo.

use std::path::Path;
use std::process::Command;

/// The README's first command adds the wasm32-wasip2 target before it
/// builds anything, for a toolchain that was installed without it.
#[test]
fn the_example_scripts_add_the_wasm_target_before_building() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for script in [
        "examples/wordcount/run.sh",
        "examples/hot-swap/run.sh",
        "examples/nats/run.sh",
        "examples/kafka/run.sh",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        for tool in ["rustup", "cargo"] {
            // Each stand-in records its call; cargo then fails, so nothing
            // is built or run.
            let exit = if tool == "cargo" { 1 } else { 0 };
            let shim = dir.path().join(tool);
            std::fs::write(
                &shim,
                format!(
                    "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit {exit}\n",
                    log.display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .arg(workspace.join(script))
            .env("PATH", path)
            .output()
            .expect("bash runs");
        assert!(!out.status.success(), "{script}: the cargo stand-in fails");
        let calls = std::fs::read_to_string(&log).unwrap();
        let calls: Vec<&str> = calls.lines().collect();
        assert_eq!(
            calls.first().copied(),
            Some("rustup target add wasm32-wasip2"),
            "{script}: {calls:?}"
        );
        assert!(
            calls.get(1).is_some_and(|c| c.starts_with("cargo build")),
            "{script}: {calls:?}"
        );
    }
}
