#!/usr/bin/env bash
# GPT-2 124M training throughput and MFU on GPU 0: convoy (bench/gpt2-124m-cuda.toml, or the
# spec given as SPEC=) against PyTorch (bench/gpt_torch.py, same model, batch and precision),
# alternating runs.
#
#   bench/gpu_gpt2.sh [PYTHON] [ROUNDS]     # from the repository root; PYTHON needs torch
#
# PEAK_TFLOPS is the GPU's dense peak for the precision (default 989: H100/H200 SXM bf16);
# TORCH_FLAGS adds flags to the PyTorch run (e.g. "--compile --sdpa"); CUBLASLT=1 also runs
# convoy with cuBLASLt for its linear products (the spec with `[kernels] gemm = "cublaslt"`),
# FLASH=1 with flash attention (`[kernels] attention = "flash"`). Prints per-run tokens/s (median over the steps after the
# first 5), MFU, then medians and the ratio.
set -euo pipefail
PY=${1:-python3}
ROUNDS=${2:-3}
SPEC=${SPEC:-bench/gpt2-124m-cuda.toml}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
TORCH_FLAGS=${TORCH_FLAGS:-}
# NVRTC from the CUDA toolkit when it is installed in the usual place.
if [ -d /usr/local/cuda/lib64 ]; then
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
BIN=${CONVOY_BIN:-target/release/convoy}
[ -n "${CONVOY_BIN:-}" ] || cargo build --release -q -p convoy-cli
key() { sed -n "s/^$1 *= *\([0-9]*\).*/\1/p" "$SPEC" | head -1; }
L=$(key n_layer); C=$(key n_embd); NH=$(key n_head); T=$(key seq_len); B=$(key batch_size)
dtype=$(sed -n 's/^precision *= *"\(.*\)"/\1/p' "$SPEC"); dtype=${dtype:-fp32}
tmp=$(mktemp -d)
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# llm.c's FLOPs per token: 6N + 6·L·C·T, N the parameter count (padded vocabulary included).
N=$(awk -v L="$L" -v C="$C" -v T="$T" 'BEGIN {Vp=50304; print Vp*C + T*C + L*(12*C*C + 13*C) + 2*C}')
mfu() { awk -v tps="$1" -v n="$N" -v L="$L" -v C="$C" -v T="$T" -v p="$PEAK_TFLOPS" \
  'BEGIN {printf "%.1f", 100 * tps * (6*n + 6*L*C*T) / (p*1e12)}'; }
# The spec with a [kernels] table appended (the spec must not have one), beside it so its
# relative data paths still resolve.
variant() {
  local out
  out="$(dirname "$SPEC")/.gpu_gpt2-$1.toml"
  { cat "$SPEC"; printf '\n[kernels]\n%s\n' "$2"; } >"$out"
  echo "$out"
}
LT_SPEC=$(variant cublaslt 'gemm = "cublaslt"')
FLASH_SPEC=$(variant flash 'attention = "flash"')
trap 'rm -rf "$tmp" "$LT_SPEC" "$FLASH_SPEC"' EXIT
for round in $(seq "$ROUNDS"); do
  convoy_tps() {
    "$BIN" train "$1" --json >"$tmp/convoy.jsonl"
    grep '"event":"step"' "$tmp/convoy.jsonl" | tail -n +6 | sed 's/.*"throughput":\([0-9.e+]*\).*/\1/' | median
  }
  c_tps=$(convoy_tps "$SPEC")
  if [ "${CUBLASLT:-0}" = 1 ]; then
    l_tps=$(convoy_tps "$LT_SPEC")
    echo "round $round: convoy with cuBLASLt products ${l_tps} tok/s (MFU $(mfu "$l_tps") %)"
    echo "$l_tps" >>"$tmp/l"
  fi
  if [ "${FLASH:-0}" = 1 ]; then
    f_tps=$(convoy_tps "$FLASH_SPEC")
    echo "round $round: convoy with flash attention ${f_tps} tok/s (MFU $(mfu "$f_tps") %)"
    echo "$f_tps" >>"$tmp/f"
  fi
  # shellcheck disable=SC2086
  "$PY" bench/gpt_torch.py --device cuda --dtype "$dtype" --layers "$L" --channels "$C" \
    --heads "$NH" --seq-len "$T" --batch "$B" --steps 25 --warmup 5 --json $TORCH_FLAGS >"$tmp/torch.json"
  t_tps=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens_per_s"])' "$tmp/torch.json")
  echo "round $round: convoy ${c_tps} tok/s (MFU $(mfu "$c_tps") %) | pytorch ${t_tps} tok/s (MFU $(mfu "$t_tps") %)"
  echo "$c_tps" >>"$tmp/c"; echo "$t_tps" >>"$tmp/t"
done
c=$(median <"$tmp/c"); t=$(median <"$tmp/t")
if [ -s "$tmp/l" ]; then
  l=$(median <"$tmp/l")
  echo "median: convoy with cuBLASLt products $l tok/s (MFU $(mfu "$l") %)"
fi
if [ -s "$tmp/f" ]; then
  f=$(median <"$tmp/f")
  echo "median: convoy with flash attention $f tok/s (MFU $(mfu "$f") %)"
fi
echo "median: convoy $c tok/s (MFU $(mfu "$c") %), pytorch $t tok/s (MFU $(mfu "$t") %)," \
  "ratio $(awk -v c="$c" -v t="$t" 'BEGIN {printf "%.2f", c/t}')x ($N parameters, $dtype, peak $PEAK_TFLOPS TFLOP/s)"
