#!/usr/bin/env bash
# CPU training throughput of the benchmark GPT (bench/gpt-cpu.toml) in convoy and in PyTorch
# eager fp32 (bench/gpt_torch.py), same model, batch and thread count, alternating runs.
#
#   bench/cpu_gpt.sh [PYTHON] [ROUNDS]     # from the repository root; PYTHON needs torch
#
# Prints per-run tokens/s (median over steps 4..20) and peak RSS, then medians and the ratio.
set -euo pipefail
PY=${1:-python3}
ROUNDS=${2:-3}
THREADS=${THREADS:-2}
cargo build --release -q -p convoy-cli
tmp=$(mktemp -d)
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for round in $(seq "$ROUNDS"); do
  /usr/bin/time -f %M -o "$tmp/convoy.rss" target/release/convoy train bench/gpt-cpu.toml --json --threads "$THREADS" >"$tmp/convoy.jsonl"
  c_tps=$(grep '"event":"step"' "$tmp/convoy.jsonl" | tail -n +4 | sed 's/.*"throughput":\([0-9.e+]*\).*/\1/' | median)
  c_rss=$(cat "$tmp/convoy.rss")
  /usr/bin/time -f %M -o "$tmp/torch.rss" "$PY" bench/gpt_torch.py --threads "$THREADS" --steps 20 --warmup 3 --json >"$tmp/torch.json"
  t_tps=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens_per_s"])' "$tmp/torch.json")
  t_rss=$(cat "$tmp/torch.rss")
  echo "round $round: convoy ${c_tps} tok/s, ${c_rss} KB peak RSS | pytorch ${t_tps} tok/s, ${t_rss} KB peak RSS"
  echo "$c_tps" >>"$tmp/c"; echo "$t_tps" >>"$tmp/t"; echo "$c_rss" >>"$tmp/cr"; echo "$t_rss" >>"$tmp/tr"
done
c=$(median <"$tmp/c"); t=$(median <"$tmp/t")
echo "median: convoy $c tok/s, pytorch $t tok/s, ratio $(awk -v c="$c" -v t="$t" 'BEGIN {printf "%.2f", c/t}')x;" \
  "peak RSS convoy $(median <"$tmp/cr") KB, pytorch $(median <"$tmp/tr") KB"
