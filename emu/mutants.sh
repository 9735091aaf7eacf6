#!/usr/bin/env bash
# Mutation test of the emulated GPU pass (emu/gpu_tests.sh): each mutant below is a known kind
# of kernel bug, injected into a copy of kernels/cuda/ that the tests compile instead of the
# embedded sources (CONVOY_KERNEL_SOURCE_DIR, see CompileSettings::from_env). Every mutant must
# make its tests fail ("killed"); one that survives means the tests (or the emulator) would let
# that bug through, and fails this script. Run it from anywhere, with what emu/gpu_tests.sh
# needs (NVRTC on LD_LIBRARY_PATH, CONVOY_CUDA_INCLUDE):
#
#   emu/mutants.sh                 # every mutant (about 30 s on 2 cores, tests built)
#   emu/mutants.sh NAME...         # only these mutants
#   MUTANTS_RACECHECK=0 emu/mutants.sh NAME...   # force the race check off (or 1: on) for all
#   MUTANTS_KEEP=1 emu/mutants.sh  # keep the work folder (each run's log, the last copy)
#
# First the same test selections run on an exact copy of the sources and must pass: a broken
# setup (NVRTC, the build, the copy) then fails here instead of passing for killed mutants.
# Every original text must occur exactly once in its file, checked before anything runs, so
# the list fails loudly rather than going stale when a kernel changes: update it with the
# kernel. Compiled PTX goes to a private cache (CONVOY_KERNEL_CACHE), so a mutant is never
# served the PTX of the real kernel, nor leaves its own in the user's cache.
set -euo pipefail
cd "$(dirname "$0")/.."

names=() files=() races=() selections=() originals=() replacements=()
# mutant NAME FILE RACECHECK(0|1) SELECTION ORIGINAL REPLACEMENT
#   FILE is in kernels/cuda/; SELECTION is the cargo test arguments that must fail (a name
#   filter keeps the run to the test that matters); ORIGINAL is replaced by REPLACEMENT, both
#   exact text (whitespace included), quoted in '' (so no ' inside). With RACECHECK 1 the
#   emulator's shared-memory race check is on and must be what reports the mutant.
mutant() {
  names+=("$1") files+=("$2") races+=("$3") selections+=("$4") originals+=("$5")
  replacements+=("$6")
}

# (a) The tensor-core GEMM's A fragments in the wrong registers: a1 = A(g+8, 2t..) and a2 =
# A(g, 2t+8..) swapped ("n" A, which gemm_bf16_nn and _nt read).
mutant hgemm-a-fragments-swapped matmul.cu 0 \
  '-p convoy-kernels --test gpu_matmul generic_bf16_gemms' \
  'af[1] = hg_pair(p + 8 * LDA_S);
                    af[2] = hg_pair(p + 8);' \
  'af[1] = hg_pair(p + 8);
                    af[2] = hg_pair(p + 8 * LDA_S);'

# (b) The fp32 GEMM reads its first shared-memory stage without waiting for the other threads
# to store it. The emulator runs warp after warp, so warp 0 reads a tile the others have not
# written yet: wrong results even without the race check.
mutant sgemm-first-stage-unsynced matmul.cu 0 \
  '-p convoy-kernels --test gpu_matmul generic_fp32_gemms' \
  '        stage(0);
    }
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += SG_BK) {' \
  '        stage(0);
    }
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += SG_BK) {'

# (b') The same in the tensor-core GEMM, for the stages after the first: the barrier after
# storing the prefetched stage.
mutant hgemm-next-stage-unsynced matmul.cu 0 \
  '-p convoy-kernels --test gpu_matmul generic_bf16_gemms' \
  '        if (more) stage(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }

#pragma unroll
    for (int i = 0; i < 4; ++i)' \
  '        if (more) stage(buf ^ 1);
        buf ^= 1;
    }

#pragma unroll
    for (int i = 0; i < 4; ++i)'

# (c) The tensor-core GEMM's epilogue stores the second half of each fragment (rows g + 8) to
# row g + 4.
mutant hgemm-epilogue-row-off-by-4 matmul.cu 0 \
  '-p convoy-kernels --test gpu_matmul generic_bf16_gemms' \
  'const int m = m0 + wm + i * 16 + g + h * 8;' \
  'const int m = m0 + wm + i * 16 + g + h * 4;'

# (d) block_sum without either of its barriers. Both are caught by the values alone, even in
# the emulator's schedule (warp after warp, each up to its next barrier): without the first,
# warp 0 stores its partial of a row's second sum over the first sum's partials before warps
# 1.. have read them; without the second, warp 0 reads partials the later warps have not
# stored yet. The first runs with the race check on, which must be what reports it: the list
# keeps the race check itself under test. (The backticks are the kernel comment's, literal.)
# shellcheck disable=SC2016
mutant block-sum-war-barrier common.cuh 1 \
  '-p convoy-kernels --test gpu_layernorm' \
  '    v = warp_sum(v);
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;' \
  '    v = warp_sum(v);
    if (lane == 0) shared[warp] = v;'

mutant block-sum-raw-barrier common.cuh 0 \
  '-p convoy-kernels --test gpu_layernorm' \
  '    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0f;' \
  '    if (lane == 0) shared[warp] = v;
    v = lane < warps ? shared[lane] : 0.0f;'

# block_max without its first barrier (the one after `v = warp_max(v);`): it matters only when
# a block loops over a second row and overwrites `shared` while later warps still read the
# previous row's partials. gpu_classifier launches the loss once more with fewer blocks than
# rows for this (the mutant survived every test while all launched one block per row).
# shellcheck disable=SC2016
mutant block-max-war-barrier common.cuh 1 \
  '-p convoy-kernels --test gpu_classifier crossentropy_and_softmax' \
  '    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;' \
  '    v = warp_max(v);
    if (lane == 0) shared[warp] = v;'

# Flash attention: the second step of the 4-lane row sum shuffles with lane ^ 4, a lane of the
# next row, so each row's softmax denominator mixes in another row's.
mutant flash-row-sum-shuffle-offset attention.cu 0 \
  '-p convoy-kernels --test gpu_flash_attention flash_attention_matches' \
  'return v + __shfl_xor_sync(0xffffffffu, v, 2);' \
  'return v + __shfl_xor_sync(0xffffffffu, v, 4);'

# LayerNorm: the variance loop stops one channel short (off-by-one loop bound).
mutant layernorm-variance-off-by-one layernorm.cu 0 \
  '-p convoy-kernels --test gpu_layernorm' \
  'for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const float d = load(x + i) - mu;' \
  'for (int i = threadIdx.x; i < C - 1; i += blockDim.x) {
            const float d = load(x + i) - mu;'

# Cross-entropy: the guard for a target >= V is gone, so the loss reads a logit past the row's
# real columns instead of giving NaN.
mutant crossentropy-target-guard classifier.cu 0 \
  '-p convoy-kernels --test gpu_classifier out_of_range_target' \
  'if (target == CONVOY_IGNORE_INDEX || target >= (unsigned)V) {' \
  'if (target == CONVOY_IGNORE_INDEX) {'

# AdamW: the second moment's bias correction dropped (a wrong scale).
mutant adamw-no-bias-correction optim.cu 0 \
  '-p convoy-kernels --test gpu_optim adamw' \
  '(mi / (sqrtf(vi) / bc2_sqrt + eps))' \
  '(mi / (sqrtf(vi) + eps))'

# Encoder backward: dwpe sums the batch rows b < B - 1 (off-by-one loop bound).
mutant encoder-wpe-off-by-one encoder.cu 0 \
  '-p convoy-kernels --test gpu_encoder forward_and_backward' \
  'for (int b = 0; b < B; b++) acc +=' \
  'for (int b = 0; b < B - 1; b++) acc +='

# Which mutants to run: the arguments, else all.
picked=()
if [ $# -eq 0 ]; then
  picked=("${!names[@]}")
else
  for want in "$@"; do
    found=
    for i in "${!names[@]}"; do
      if [ "${names[$i]}" = "$want" ]; then picked+=("$i") found=1; fi
    done
    [ -n "$found" ] || { echo "mutants.sh: no mutant named $want (see the list in $0)" >&2; exit 2; }
  done
fi
race_of() { echo "${MUTANTS_RACECHECK:-${races[$1]}}"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/convoy-mutants.XXXXXX")
if [ -n "${MUTANTS_KEEP:-}" ]; then
  trap 'echo "mutants.sh: logs in $tmp"' EXIT
else
  trap 'rm -rf "$tmp"' EXIT
fi
# One source folder path for every run: the cache key is the full text (paths included), so
# the families a mutant leaves alone are compiled once for the whole script.
src="$tmp/cuda"
export CONVOY_KERNEL_CACHE="$tmp/cache"

# Copies kernels/cuda to $src and, given a mutant's index, applies it; fails unless its
# original text occurs exactly once.
prepare() {
  rm -rf "$src"
  cp -r kernels/cuda "$src"
  [ $# -eq 0 ] && return 0
  python3 - "$src/${files[$1]}" "${names[$1]}" "${originals[$1]}" "${replacements[$1]}" <<'PY'
import sys
path, name, old, new = sys.argv[1:5]
text = open(path).read()
n = text.count(old)
if n != 1:
    sys.exit(f"mutants.sh: mutant {name}: its original text occurs {n} times in "
             f"kernels/cuda/{path.rsplit('/', 1)[-1]} (must be exactly once): update the list\n"
             f"--- original text:\n{old}")
open(path, "w").write(text.replace(old, new))
PY
}

# Runs a test selection on $src; $1 log file, $2 race check (0|1), $3 selection. Sets `rc`
# (the exit status) and `secs`.
run_tests() {
  local log=$1 race=$2 args start
  read -ra args <<<"$3"
  start=$(date +%s%N)
  set +e
  # No backtraces: symbolizing one per failed test costs seconds, the message is enough.
  CONVOY_KERNEL_SOURCE_DIR="$src" CONVOY_EMU_RACECHECK=$race RUST_BACKTRACE=0 \
    emu/gpu_tests.sh "${args[@]}" >"$log" 2>&1
  rc=$?
  set -e
  secs=$(( ($(date +%s%N) - start) / 100000000 ))
  secs="$((secs / 10)).$((secs % 10))"
}

# Every picked mutant applies (its original text is there, once) before any test runs.
for i in "${picked[@]}"; do prepare "$i"; done

t0=$(date +%s)
# The baseline: each distinct (selection, race check) of the picked mutants, unmutated.
declare -A seen=()
for i in "${picked[@]}"; do
  key="$(race_of "$i") ${selections[$i]}"
  [ -z "${seen[$key]:-}" ] || continue
  seen[$key]=1
  prepare
  log="$tmp/baseline-${#seen[@]}.log"
  run_tests "$log" "$(race_of "$i")" "${selections[$i]}"
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "mutants.sh: the unmutated sources fail '${selections[$i]}' (race check" \
      "$(race_of "$i")): the setup is broken, no mutant can be judged (log above)" >&2
    exit 1
  fi
  echo "baseline: ${selections[$i]} (race check $(race_of "$i")) passes (${secs} s)"
done

rows=() survivors=() broken=()
for i in "${picked[@]}"; do
  prepare "$i"
  log="$tmp/${names[$i]}.log"
  run_tests "$log" "$(race_of "$i")" "${selections[$i]}"
  if [ "$rc" -eq 0 ]; then
    verdict=survived
    survivors+=("${names[$i]}")
  elif grep -q "compiling .* failed" "$log"; then
    # A mutant that does not compile tests nothing: the list is wrong.
    verdict="no compile"
    broken+=("${names[$i]}")
    grep -A5 "compiling .* failed" "$log" >&2
  elif grep -q "shared-memory race" "$log"; then
    verdict="killed (race)"
  elif [ -z "${MUTANTS_RACECHECK:-}" ] && [ "${races[$i]}" = 1 ]; then
    # Listed for the race check, which did not report it: the check may have stopped working.
    verdict="killed, no race"
    survivors+=("${names[$i]}")
  else
    verdict=killed
  fi
  rows+=("$(printf '%-30s %-6s %-68s %-14s %6s' "${names[$i]}" "$(race_of "$i")" \
    "${selections[$i]}" "$verdict" "$secs")")
  echo "${rows[-1]}"
done

echo
printf '%-30s %-6s %-68s %-14s %6s\n' mutant race tests result seconds
printf '%s\n' "${rows[@]}"
echo "total: ${#picked[@]} mutants, $(($(date +%s) - t0)) s (baseline included)"
if [ ${#broken[@]} -gt 0 ]; then
  echo "mutants.sh: these mutants do not compile, fix the list: ${broken[*]}" >&2
fi
if [ ${#survivors[@]} -gt 0 ]; then
  echo "mutants.sh: these mutants survived (the tests let the bug through), or were listed for" \
    "the race check and not reported by it: ${survivors[*]}" >&2
fi
[ ${#broken[@]} -eq 0 ] && [ ${#survivors[@]} -eq 0 ]
