//! Builds the example plugins to `wasm32-wasip2` components and generates
//! one path constant per plugin, following wasmtime's `test-programs`
//! artifacts crate: a nested `cargo build` with its own target directory,
//! so plain `cargo test` works on a fresh checkout and never contends for
//! the outer build's target directory lock.
//!
//! The nested build, the Python venv and the JavaScript toolchain live in
//! one work directory per profile (`target/debug/weir-test-plugins`), not
//! under `OUT_DIR`: `cargo clippy` and `cargo test` run this script with
//! different hashes, and a second copy of that work (about 850 MB) is what
//! filled the disk of a CI machine. A file lock keeps two outer builds from
//! writing it at once.

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `(constant name, package, artifact file stem)` of every plugin.
const PLUGINS: &[(&str, &str, &str)] = &[
    ("TOKENIZE", "weir-plugin-tokenize", "weir_plugin_tokenize"),
    (
        "WORD_COUNT",
        "weir-plugin-word-count",
        "weir_plugin_word_count",
    ),
    ("FILTER", "weir-plugin-filter", "weir_plugin_filter"),
    ("FAULTY", "weir-plugin-faulty", "weir_plugin_faulty"),
    ("STATS", "weir-plugin-stats", "weir_plugin_stats"),
    (
        "HOT_SWAP_V1",
        "weir-plugin-hot-swap-v1",
        "weir_plugin_hot_swap_v1",
    ),
    (
        "HOT_SWAP_V2",
        "weir-plugin-hot-swap-v2",
        "weir_plugin_hot_swap_v2",
    ),
    ("HOSTILE", "weir-plugin-hostile", "weir_plugin_hostile"),
    (
        "WORD_COUNT_BROKEN",
        "weir-plugin-word-count-broken",
        "weir_plugin_word_count_broken",
    ),
    ("WASI_KV", "weir-plugin-wasi-kv", "weir_plugin_wasi_kv"),
    ("NEXMARK", "weir-plugin-nexmark", "weir_plugin_nexmark"),
    (
        "WINDOW_COUNT",
        "weir-plugin-window-count",
        "weir_plugin_window_count",
    ),
    (
        "PROCESSING_COUNT",
        "weir-plugin-processing-count",
        "weir_plugin_processing_count",
    ),
];

const TARGET: &str = "wasm32-wasip2";

/// `(constant name, directory under the workspace)` of every Python plugin;
/// each directory holds an `app.py` built against `guest-sdk/python`.
const PYTHON_PLUGINS: &[(&str, &str)] = &[
    ("PY_WORD_COUNT", "plugins/python/word-count"),
    ("PY_STATS", "plugins/python/stats"),
    ("PY_SESSION_COUNT", "plugins/python/session-count"),
    ("PY_NEXMARK", "plugins/python/nexmark"),
];

/// The componentize-py release the Python plugins are built with.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// `(constant name, directory under the workspace)` of every JavaScript
/// plugin; each directory holds an `app.js` that imports `./weir.js`, the
/// helper module `guest-sdk/js/weir.js`.
const JS_PLUGINS: &[(&str, &str)] = &[
    ("JS_WORD_COUNT", "plugins/js/word-count"),
    ("JS_STATS", "plugins/js/stats"),
    ("JS_FORMAT", "plugins/js/format"),
    ("JS_TUMBLING_COUNT", "plugins/js/tumbling-count"),
];

/// Where the JavaScript toolchain (componentize-js, pinned with its lock
/// file) is described.
const JS_SDK: &str = "guest-sdk/js";

/// Variables cargo sets for build scripts (or a user sets for the outer
/// build) that would make the nested build use the host's flags, wrappers
/// or target directory.
const REMOVED_ENV: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CFG_MIRI",
    "RUSTC",
    "RUSTDOC",
];

/// Adds the wasm32-wasip2 target where rustup runs the build: rustup adds
/// the targets `rust-toolchain.toml` lists only when it installs the
/// toolchain, so an older installation lacks it. Without rustup the nested
/// build names the missing target itself.
fn ensure_wasm_target() {
    let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") else {
        return;
    };
    let _ = Command::new("rustup")
        .args(["target", "add", "--toolchain"])
        .arg(toolchain)
        .arg(TARGET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .join("../..")
        .canonicalize()
        .context("finding the workspace root")?;

    for dir in [
        "guest-sdk",
        "plugins",
        "wit",
        "host/format/src",
        "host/format/Cargo.toml",
        "host/nexmark/src",
        "host/nexmark/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    ensure_wasm_target();
    let work = work_dir(&out_dir)?;
    let lock = fs::File::create(work.join(".lock")).context("creating the work directory lock")?;
    lock.lock().context("locking the work directory")?;
    let target_dir = work.join("wasm-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--target", TARGET]);
    for (_, package, _) in PLUGINS {
        cmd.args(["-p", package]);
    }
    for var in REMOVED_ENV {
        cmd.env_remove(var);
    }
    // Set after the removals, which include the outer CARGO_TARGET_DIR.
    cmd.env("CARGO_TARGET_DIR", &target_dir);
    run(&mut cmd).context("building the Rust plugins")?;

    let artifacts = target_dir.join(TARGET).join("release");
    let mut deps = BTreeSet::new();
    let mut generated = Generated::default();
    for (constant, package, stem) in PLUGINS {
        let wasm = artifacts.join(format!("{stem}.wasm"));
        let bytes = fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
        // A component's preamble: magic, then version 0x0d and layer 1.
        if bytes.get(..8) != Some(b"\0asm\x0d\x00\x01\x00".as_slice()) {
            bail!("{} is not a WebAssembly component", wasm.display());
        }
        read_deps(&wasm, &mut deps)?;
        generated.plugin(
            constant,
            package.trim_start_matches("weir-plugin-"),
            &format!("The `{package}` plugin, a `{TARGET}` component."),
            &wasm,
        )?;
    }
    for dep in deps {
        println!("cargo:rerun-if-changed={dep}");
    }
    for (constant, dir) in PYTHON_PLUGINS {
        let wasm = build_python(&workspace, &work, dir)?;
        generated.plugin(
            constant,
            dir.trim_start_matches("plugins/"),
            &format!("The Python plugin in `{dir}`, built with {COMPONENTIZE_PY}."),
            &wasm,
        )?;
    }
    if !JS_PLUGINS.is_empty() {
        let tool = install_componentize_js(&workspace, &work)?;
        for (constant, dir) in JS_PLUGINS {
            let wasm = build_js(&workspace, &work, &tool, dir)?;
            generated.plugin(
                constant,
                dir.trim_start_matches("plugins/"),
                &format!(
                    "The JavaScript plugin in `{dir}`, built with componentize-js and `{JS_SDK}/weir.js`."
                ),
                &wasm,
            )?;
        }
    }
    let code = generated.finish()?;
    fs::write(out_dir.join("plugins.rs"), code).context("writing plugins.rs")?;
    drop(lock);
    Ok(())
}

/// The work directory shared by every run of this script in one profile:
/// `OUT_DIR` is `<profile dir>/build/<package>-<hash>/out`, so the profile
/// directory is three levels up. Falls back to `OUT_DIR` itself where the
/// layout differs.
fn work_dir(out_dir: &Path) -> Result<PathBuf> {
    let build = out_dir.parent().and_then(Path::parent);
    let work = match build
        .filter(|dir| dir.ends_with("build"))
        .and_then(Path::parent)
    {
        Some(profile) => profile.join("weir-test-plugins"),
        None => out_dir.to_path_buf(),
    };
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

/// Installs componentize-py into a virtual environment under the work directory
/// (once), then builds the Python plugin in `dir` into a component.
fn build_python(workspace: &Path, work: &Path, dir: &str) -> Result<PathBuf> {
    let venv = work.join("componentize-py");
    let tool = venv.join("bin").join("componentize-py");
    if !tool.is_file() {
        let python = env::var_os("WEIR_PYTHON").unwrap_or_else(|| "python3".into());
        run(Command::new(&python).arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            COMPONENTIZE_PY,
        ]))?;
    }
    let name = dir.rsplit('/').next().unwrap_or(dir);
    let wasm = work.join("python").join(format!("{name}.wasm"));
    fs::create_dir_all(wasm.parent().expect("has a parent"))?;
    run(Command::new(&tool)
        .current_dir(workspace.join(dir))
        // Bytecode caches in the source tree would retrigger this script.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-d")
        .arg(workspace.join("wit"))
        .args(["-w", "stream-operator", "componentize", "-p", "."])
        .arg("-p")
        .arg(workspace.join("guest-sdk/python"))
        .arg("app")
        .arg("-o")
        .arg(&wasm))?;
    Ok(wasm)
}

/// Installs the toolchain pinned by `guest-sdk/js/package-lock.json` into
/// `componentize-js` in the work directory (once per change of the lock) and returns the
/// componentize-js command-line script.
///
/// `npm install` from the lock, not `npm ci`: the lock cannot list the
/// optional per-platform packages a registry lacks (a mirror without some
/// platforms), and `npm ci` then rejects the lock it just wrote
/// (npm/cli#9846); `npm install` still takes every locked version and
/// checks every locked integrity hash.
fn install_componentize_js(workspace: &Path, work: &Path) -> Result<PathBuf> {
    println!("cargo:rerun-if-env-changed=WEIR_NODE");
    println!("cargo:rerun-if-env-changed=WEIR_NPM");
    for dir in [JS_SDK, "plugins/js"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let sdk = workspace.join(JS_SDK);
    let dir = work.join("componentize-js");
    let tool = dir.join("node_modules/@bytecodealliance/componentize-js/src/cli.js");
    let stamp = dir.join("installed-from.json");
    let mut wanted = Vec::new();
    for file in ["package.json", "package-lock.json", ".npmrc"] {
        wanted
            .extend(fs::read(sdk.join(file)).with_context(|| format!("reading {JS_SDK}/{file}"))?);
    }
    if tool.is_file() && fs::read(&stamp).ok().as_deref() == Some(wanted.as_slice()) {
        return Ok(tool);
    }
    fs::create_dir_all(&dir)?;
    for file in ["package.json", "package-lock.json", ".npmrc"] {
        fs::copy(sdk.join(file), dir.join(file))
            .with_context(|| format!("copying {JS_SDK}/{file}"))?;
    }
    let npm = env::var_os("WEIR_NPM").unwrap_or_else(|| "npm".into());
    run(Command::new(npm).current_dir(&dir).args([
        "install",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ]))
    .context("installing componentize-js (needs Node.js 20.6 or later and npm)")?;
    if !tool.is_file() {
        bail!("npm install did not install {}", tool.display());
    }
    fs::write(&stamp, wanted)?;
    Ok(tool)
}

/// Builds the JavaScript plugin in `dir` into a component: its files and
/// `weir.js` are staged in a folder under the work directory (componentize-js
/// resolves relative imports inside the source file's folder), so the
/// build writes nothing into the source tree.
fn build_js(workspace: &Path, work: &Path, tool: &Path, dir: &str) -> Result<PathBuf> {
    let name = dir.rsplit('/').next().unwrap_or(dir);
    let src = workspace.join(dir);
    let stage = work.join("js").join(name);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    copy_dir(&src, &stage)?;
    if stage.join("weir.js").exists() {
        bail!("{dir}/weir.js would shadow {JS_SDK}/weir.js, which the build puts there");
    }
    fs::copy(
        workspace.join(JS_SDK).join("weir.js"),
        stage.join("weir.js"),
    )?;
    let wasm = work.join("js").join(format!("{name}.wasm"));
    let node = env::var_os("WEIR_NODE").unwrap_or_else(|| "node".into());
    run(Command::new(node)
        .current_dir(&stage)
        .arg(tool)
        .arg("app.js")
        .arg("--wit")
        .arg(workspace.join("wit"))
        .args(["--world-name", "stream-operator"])
        // Weir links no HTTP, so leave out fetch() and its event loop.
        .args(["--disable", "http", "fetch-event"])
        .arg("--out")
        .arg(&wasm))
    .with_context(|| format!("building the JavaScript plugin {dir}"))?;
    let bytes = fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    if bytes.get(..8) != Some(b"\0asm\x0d\x00\x01\x00".as_slice()) {
        bail!("{} is not a WebAssembly component", wasm.display());
    }
    Ok(wasm)
}

/// Copies the files under `from` into `to`, creating directories.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()))?;
        } else {
            fs::copy(&path, to.join(entry.file_name()))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// The generated `plugins.rs`: one path constant per plugin, and `all()`.
#[derive(Default)]
struct Generated {
    code: String,
    all: String,
}

impl Generated {
    /// Adds `constant` (documented by `doc`) for the component at `wasm`,
    /// listed in `all()` as `name`.
    fn plugin(&mut self, constant: &str, name: &str, doc: &str, wasm: &Path) -> Result<()> {
        let path = wasm.to_str().context("artifact path is not UTF-8")?;
        writeln!(self.code, "/// {doc}")?;
        writeln!(self.code, "pub const {constant}: &str = {path:?};")?;
        writeln!(self.all, "        ({name:?}, {constant}),")?;
        Ok(())
    }

    /// The file's text.
    fn finish(self) -> Result<String> {
        let Self { mut code, all } = self;
        writeln!(
            code,
            "/// Every plugin as `(name, path)`, name without the `weir-plugin-` prefix."
        )?;
        writeln!(
            code,
            "pub fn all() -> &'static [(&'static str, &'static str)] {{\n    &[\n{all}    ]\n}}"
        )?;
        Ok(code)
    }
}

/// Runs `cmd`, failing with its output if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
    Ok(())
}

/// Adds every source file cargo's dep-info lists for `artifact`.
fn read_deps(artifact: &Path, deps: &mut BTreeSet<String>) -> Result<()> {
    let dep_file = artifact.with_extension("d");
    let contents =
        fs::read_to_string(&dep_file).with_context(|| format!("reading {}", dep_file.display()))?;
    for line in contents.lines() {
        let Some((_, files)) = line.split_once(": ") else {
            continue;
        };
        let mut parts = files.split_whitespace();
        while let Some(part) = parts.next() {
            let mut file = part.to_owned();
            // Dep-info escapes spaces in paths as `\ `.
            while file.ends_with('\\') {
                file.pop();
                file.push(' ');
                file.push_str(parts.next().unwrap_or_default());
            }
            deps.insert(file);
        }
    }
    Ok(())
}
