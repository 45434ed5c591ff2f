#!/usr/bin/env bash
# Builds the example plugins and weir, then runs the word-count job on the
# embedded default (local files, no server). The counts land in
# examples/wordcount/out/part-*.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/wasm-target.sh
cargo build --quiet --release --target wasm32-wasip2 \
    -p weir-plugin-tokenize -p weir-plugin-filter -p weir-plugin-word-count
cargo run --quiet -p weir -- run examples/wordcount/job.toml
echo
echo "Final count per word (the highest count per word in examples/wordcount/out/part-*):"
cat examples/wordcount/out/part-* | awk -F'\t' '$2 > c[$1] {c[$1]=$2} END {for (w in c) print c[w] "\t" w}' | sort -rn | head -10
