#!/usr/bin/env bash
# The hot-swap walkthrough of README.md, non-interactively: runs version 1
# of the sensor job, stops it with a savepoint, inspects and checks the
# savepoint, restores it into version 2 (another plugin, same uid), stops
# that too, and shows that every sensor's count went on where version 1
# left it while version 2's averages appeared.
#
# Output of both runs lands in examples/hot-swap/out/, savepoints in
# examples/hot-swap/savepoints/ (the job files' `[savepoints] dir`).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=examples/hot-swap
out=$dir/out
seconds=${HOT_SWAP_SECONDS:-2}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building the plugins and weir"
source examples/wasm-target.sh
cargo build --quiet --release --target wasm32-wasip2 \
    -p weir-plugin-tokenize -p weir-plugin-hot-swap-v1 -p weir-plugin-hot-swap-v2
# Where cargo put the binary (it honours CARGO_TARGET_DIR).
weir=$(cargo build --quiet -p weir --message-format=json |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[[ -x $weir ]] || { echo "could not find the weir binary cargo built" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
# A run of this script that was interrupted leaves checkpoints of the job
# (a cancelled job keeps them), and `weir run` then refuses to start it from
# scratch. Both versions share the job name, hence the storage.
"$weir" checkpoints $dir/job-v1.toml --delete >/dev/null

# The jobs this script started, stopped (SIGINT: cancel cleanly) if it
# fails half-way.
started=()
trap 'for p in "${started[@]}"; do kill -INT "$p" 2>/dev/null || true; done' EXIT

# start NAME JOB [ARGS…]: runs `weir run JOB ARGS…` in the background with
# its output in $out/NAME.out and .err, and sets $pid, $job_id and $address
# from the line `job `…` (id ID): REST API on URL` it prints at start.
start() {
    local name=$1
    shift
    "$weir" run "$@" --rest-address 127.0.0.1:0 >"$out/$name.out" 2>"$out/$name.err" &
    pid=$!
    started+=("$pid")
    local line=""
    for _ in $(seq 300); do
        line=$(grep -m1 'REST API on ' "$out/$name.err" || true)
        [[ -n $line ]] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "weir run $* ended before it started its REST API:" >&2
            cat "$out/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    job_id=$(sed -n 's/.*(id \([^)]*\)): REST API on .*/\1/p' <<<"$line")
    address=$(sed -n 's/.*REST API on \(http[^ ]*\).*/\1/p' <<<"$line")
    if [[ -z $job_id || -z $address ]]; then
        echo "no job id and REST address in the output of weir run $*:" >&2
        cat "$out/$name.err" >&2
        exit 1
    fi
    echo "$line"
}

# stop NAME: stops the job started last with a savepoint in the job file's
# `[savepoints] dir`, waits for it to end, and sets $savepoint.
stop() {
    savepoint=$("$weir" stop "$job_id" --address "$address" | tail -1)
    wait "$pid"
    echo "savepoint: $savepoint"
    echo "the job ended; $(wc -l <"$out/$1.out") lines of output in $out/$1.out"
}

step "Version 1: counting readings per sensor for ${seconds}s"
start v1 $dir/job-v1.toml
sleep "$seconds"
"$weir" list --address "$address"
tail -n 5 "$out/v1.out"

step "Stopping version 1 with a savepoint"
stop v1
v1_savepoint=$savepoint

step "What the savepoint holds"
"$weir" savepoint inspect "$v1_savepoint"
echo
# To a file, not through `head`: weir would see a broken pipe.
"$weir" savepoint inspect "$v1_savepoint" --dump sensors/sensor >"$out/v1-sensor.jsonl"
echo "state \`sensor\` of operator \`sensors\`, one JSON line per sensor (first 3 of $out/v1-sensor.jsonl):"
head -n 3 "$out/v1-sensor.jsonl"

step "Would version 2 restore it?"
"$weir" savepoint check "$v1_savepoint" $dir/job-v2.toml

step "Version 2, restored from version 1's savepoint, for ${seconds}s"
start v2 $dir/job-v2.toml -s "$v1_savepoint"
sleep "$seconds"
head -n 5 "$out/v2.out"

step "Stopping version 2 with a savepoint"
stop v2
echo
"$weir" savepoint inspect "$savepoint" --dump sensors/sensor >"$out/v2-sensor.jsonl"
echo "state \`sensor\` as version 2 left it (first 3 of $out/v2-sensor.jsonl):"
head -n 3 "$out/v2-sensor.jsonl"

step "Per sensor: version 1's last output, version 2's first"
# Fails unless every sensor both versions saw counted on by exactly one:
# no reading lost or counted twice across the swap.
if summary=$(awk -F'\t' -v table="$out/swap.txt" '
    NR == FNR { last[$1] = $2; next }
    !($1 in first) { first[$1] = $2 }
    END {
        for (k in first) {
            if (!(k in last)) continue
            split(last[k], a, /[= ]/); split(first[k], b, /[= ]/)
            ok = (b[2] == a[2] + 1)
            bad += !ok
            n++
            printf "%-4s v1: %-10s v2: %-22s %s\n", k, last[k], first[k],
                ok ? "continued" : "NOT CONTINUED" > table
        }
        if (n == 0) { print "no sensor appears in both runs"; exit 1 }
        if (bad) { print bad " of " n " sensors did not continue"; exit 1 }
        print "all " n " sensors counted on from version 1"
    }' "$out/v1.out" "$out/v2.out"); then
    sort -V "$out/swap.txt"
    echo "$summary"
else
    [[ -f $out/swap.txt ]] && sort -V "$out/swap.txt"
    echo "$summary" >&2
    exit 1
fi
