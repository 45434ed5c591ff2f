#!/usr/bin/env bash
# Builds the plugins, weir and the example's helper, starts a nats-server
# with JetStream on 127.0.0.1:4222 (the Debian package: apt-get install
# nats-server), fills stream `words` with the words of the word-count
# example's input, runs the job (examples/nats/job.toml) and prints the
# counts it published to stream `counts`.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/wasm-target.sh
cargo build --quiet --release --target wasm32-wasip2 \
    -p weir-plugin-tokenize -p weir-plugin-word-count
cargo build --quiet -p weir --bin weir --example nats-words
if ! command -v nats-server >/dev/null 2>&1; then
    echo "error: nats-server is not installed (Debian: apt-get install nats-server)" >&2
    exit 1
fi
if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    echo "error: 127.0.0.1:4222 is in use; the example starts its own nats-server there" >&2
    exit 1
fi
store="$(mktemp -d -t weir-nats.XXXXXX)"
nats-server -js -a 127.0.0.1 -p 4222 -sd "$store" >"$store.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$store" "$store.log"' EXIT
for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
    sleep 0.1
done
url=nats://127.0.0.1:4222
target/debug/examples/nats-words feed "$url" examples/wordcount/input.txt 4
target/debug/weir run examples/nats/job.toml
echo
target/debug/examples/nats-words counts "$url"
