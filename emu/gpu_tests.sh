#!/usr/bin/env bash
# The emulated GPU test pass: convoy's GPU tests against the PTX interpreter standing in for
# libcuda and the NCCL stand-in (emu/README.md). CI runs it after the main test command; run
# it by hand the same way:
#
#   emu/gpu_tests.sh                      # every GPU test
#   emu/gpu_tests.sh -p convoy-kernels --test gpu_layernorm   # some of them (cargo test args)
#
# It needs NVRTC on LD_LIBRARY_PATH and the CUDA headers (CONVOY_CUDA_INCLUDE), as .ci/run sets
# them up. The stand-ins are linked as libcuda/libnccl into a folder of their own that only this
# pass puts first on LD_LIBRARY_PATH: never where a real GPU machine's tests would find them.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --locked -q -p convoy-cuda-emu -p convoy-nccl-emu --lib
lib="$target/emu-lib"
rm -rf "$lib" && mkdir -p "$lib"
cuda=$(cd "$target/debug" && pwd)/libconvoy_cuda_emu.so
nccl=$(cd "$target/debug" && pwd)/libconvoy_nccl_emu.so
ln -s "$cuda" "$lib/libcuda.so"
ln -s "$cuda" "$lib/libcuda.so.1"
ln -s "$nccl" "$lib/libnccl.so"
ln -s "$nccl" "$lib/libnccl.so.2"
LD_LIBRARY_PATH="$(cd "$lib" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
# A GPU test that cannot open the device fails instead of skipping.
export CONVOY_REQUIRE_GPU=1
# Two emulated GPUs in every process, for the two-rank NCCL tests.
export CONVOY_EMU_DEVICES=2
# Per-launch thread instructions and seconds, summed at the end.
CONVOY_EMU_STATS="$(cd "$target" && pwd)/emu-stats.txt"
export CONVOY_EMU_STATS
rm -f "$CONVOY_EMU_STATS"
start=$(date +%s)
if [ $# -gt 0 ]; then
  cargo test --locked "$@"
else
  # `convoy train` and the cluster's daemons run as child processes: their binaries must be
  # current.
  cargo build --locked -q --workspace --bins
  cargo test --locked -p convoy-kernels --test 'gpu_*' -p convoy-engine --test gpu_gpt \
    -p convoy-collective --test gpu_nccl -p convoy-tests --test gpu_train --test gpu_cluster
  # The kernels again as NVRTC compiles them for an A100 (sm_80; the default is an H100's
  # sm_90): the PTX differs, e.g. in how bf16 is widened.
  CONVOY_EMU_ARCH=sm_80 cargo test --locked -p convoy-kernels --test 'gpu_*'
  # The whole model's forward and backward (fp32, bf16, flash attention) once more with the
  # shared-memory race check; the global-memory check is always on.
  CONVOY_EMU_RACECHECK=1 cargo test --locked -p convoy-engine --test gpu_gpt forward_and_backward
fi
python3 - "$CONVOY_EMU_STATS" "$start" <<'PY'
import os, sys, time
ins = secs = launches = 0
for line in open(sys.argv[1]) if os.path.exists(sys.argv[1]) else []:
    f = dict(kv.split("=", 1) for kv in line.split())
    if "thread_instructions" in f and f["thread_instructions"] != "-":
        ins += int(f["thread_instructions"]); secs += float(f["seconds"]); launches += 1
rate = ins / secs / 1e6 if secs else 0
print(f"emulated GPU pass: {launches} launches, {ins/1e9:.2f} G thread instructions in "
      f"{secs:.1f} s of kernel time ({rate:.0f} M thread instructions/s); "
      f"{time.time() - int(sys.argv[2]):.0f} s in all")
PY
