#!/usr/bin/env bash
# Builds the plugins, weir and the example's helper, starts a tansu broker
# (a Kafka-protocol broker in one binary, in memory) on 127.0.0.1:9092,
# fills topic `words` with the words of the word-count example's input,
# runs the job (examples/kafka/job.toml) and prints the counts it produced
# to topic `counts`. Set TANSU to the tansu binary if it is not on PATH
# (cargo install tansu --features dynostore).
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/wasm-target.sh
cargo build --quiet --release --target wasm32-wasip2 \
    -p weir-plugin-tokenize -p weir-plugin-word-count
cargo build --quiet -p weir --bin weir --example kafka-words
tansu="${TANSU:-tansu}"
if ! command -v "$tansu" >/dev/null 2>&1; then
    echo "error: tansu is not installed (cargo install tansu --features dynostore), or set TANSU" >&2
    exit 1
fi
if (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
    echo "error: 127.0.0.1:9092 is in use; the example starts its own broker there" >&2
    exit 1
fi
log="$(mktemp -t weir-tansu.XXXXXX.log)"
"$tansu" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break
    sleep 0.1
done
target/debug/examples/kafka-words feed 127.0.0.1:9092 examples/wordcount/input.txt 4
target/debug/weir run examples/kafka/job.toml
echo
target/debug/examples/kafka-words counts 127.0.0.1:9092
