#!/usr/bin/env bash
# Everything a GPU session needs, built here and carried to the GPU machine (which cannot
# download crates): the GPU test binaries, the GEMM benchmark and the `convoy` binary, release
# builds, stripped, in gpu-kit/ (ignored by git, well under the device tool's 64 MiB).
#
#   bench/gpu_kit.sh build        # here, from the repository root
#   bench/gpu_kit.sh run [OUT]    # on the GPU machine, from the root of the carried tree
#
# `run` runs every GPU test (kernels vs the CPU; the whole GPT in fp32 and bf16 with each kernel
# choice a spec can make — convoy's GEMMs, cuBLASLt's, flash attention —, determinism and resume,
# NCCL),
# the GEMM benchmark with cuBLASLt beside it and, when PY has torch, bench/gpu_gpt2.sh (convoy
# materialized, flash and with cuBLASLt against PyTorch with SDPA); a memcheck pass of the
# whole-model forward/backward tests runs under compute-sanitizer when it is installed. The
# logs go to OUT (default gpu-kit/out): at most 8 files, as the device tool returns them.
set -euo pipefail
KIT=gpu-kit
case "${1:-}" in
build)
  rm -rf "$KIT" && mkdir -p "$KIT/tests"
  json=$(mktemp)
  cargo test --release --no-run --message-format=json \
    -p convoy-kernels --test 'gpu_*' -p convoy-engine --test gpu_gpt \
    -p convoy-collective --test gpu_nccl >"$json"
  # Each test executable, named after its package so `run` knows where to start it.
  python3 - "$json" "$KIT/tests" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        pkg = m["package_id"].split("#")[0].rstrip("/").split("/")[-1]
        shutil.copy(m["executable"], f"{sys.argv[2]}/{pkg}.{m['target']['name']}")
PY
  rm -f "$json"
  cargo build --release -q -p convoy-cli -p convoy-kernels --example gpu_gemm_bench
  cp target/release/convoy target/release/examples/gpu_gemm_bench "$KIT/"
  strip "$KIT"/convoy "$KIT"/gpu_gemm_bench "$KIT"/tests/*
  du -sh "$KIT"
  ls "$KIT/tests"
  ;;
run)
  OUT=${2:-$KIT/out}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  root=$(pwd)
  if [ -d /usr/local/cuda/lib64 ]; then
    export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  export CONVOY_KERNEL_CACHE=${CONVOY_KERNEL_CACHE:-$root/$KIT/cache}
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.txt" 2>&1 || true
  status=0
  for t in "$KIT"/tests/*; do
    name=$(basename "$t")
    # Tests read data relative to their package folder (engine/, kernels/, collective/).
    pkg=${name%%.*}; dir=${pkg#convoy-}
    echo "== $name" | tee -a "$OUT/tests.log"
    (cd "$dir" && "$root/$t" --test-threads 1 --nocapture) >>"$OUT/tests.log" 2>&1 || status=1
    tail -n 3 "$OUT/tests.log"
  done
  # Out-of-bounds or uninitialised accesses in any kernel of a whole forward and backward
  # (fp32 and bf16, every kernel choice), with launches synchronous so an error names its kernel.
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [ -x "$sanitizer" ]; then
    (cd engine && CUDA_LAUNCH_BLOCKING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
      "$root/$KIT/tests/engine.gpu_gpt" forward_and_backward --test-threads 1) \
      >"$OUT/memcheck.txt" 2>&1 || status=1
    tail -n 5 "$OUT/memcheck.txt"
  else
    echo "no compute-sanitizer: skipped the memcheck pass" | tee "$OUT/memcheck.txt"
  fi
  "$KIT/gpu_gemm_bench" --cublaslt >"$OUT/gemm.txt" 2>&1 || status=1
  cat "$OUT/gemm.txt"
  PY=${PY:-python3}
  if "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    # PyTorch as its users run GPT-2: fused SDPA attention (flash) and fused AdamW.
    TORCH_FLAGS=${TORCH_FLAGS:---sdpa} CUBLASLT=1 FLASH=1 CONVOY_BIN=$KIT/convoy bench/gpu_gpt2.sh "$PY" "${ROUNDS:-3}" >"$OUT/gpt2.txt" 2>&1 || status=1
    cat "$OUT/gpt2.txt"
  else
    echo "no torch with CUDA in $PY: skipped bench/gpu_gpt2.sh" | tee "$OUT/gpt2.txt"
  fi
  exit "$status"
  ;;
*)
  echo "usage: bench/gpu_kit.sh build | run [OUT]" >&2
  exit 2
  ;;
esac
