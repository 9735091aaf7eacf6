#!/usr/bin/env bash
# Runs the convoy ring and the Gloo peer alternately, one configuration at a time, so both see
# the same machine state. Usage: bench/allreduce.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
cargo build --release -q -p convoy-collective --example allreduce_bench
BENCH=target/release/examples/allreduce_bench
export GLOO_SOCKET_IFNAME=lo
for round in $(seq 1 "${1:-1}"); do
  for world in 2 4; do
    for mb in 4 64 256; do
      "$BENCH" --world "$world" --mb "$mb" ${ITERS:+--iters $ITERS} | tail -n 1
      "$PY" bench/allreduce_gloo.py --world "$world" --mb "$mb" ${ITERS:+--iters $ITERS} | tail -n 1
    done
  done
done
