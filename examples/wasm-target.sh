# Sourced by the examples' run.sh: makes sure the wasm32-wasip2 target is
# installed. rustup adds the targets rust-toolchain.toml lists only when it
# installs the toolchain, so a toolchain installed before (or by a rustup
# without auto-install) lacks it; add it, as .ci/run does.
if command -v rustup >/dev/null 2>&1; then
    rustup target add wasm32-wasip2 >/dev/null 2>&1 ||
        rustup target list --installed | grep -qx wasm32-wasip2 ||
        { echo "error: the wasm32-wasip2 target is missing and \`rustup target add wasm32-wasip2\` failed" >&2; exit 1; }
fi
