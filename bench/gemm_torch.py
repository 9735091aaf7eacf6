#!/usr/bin/env python3
"""fp32 torch.matmul throughput for the GEMM shapes of convoy's GPT-2 benchmark
(B*T = 1024, C = 256, Vp = 50304). Contiguous row-major operands; not part of CI."""
import argparse
import json
import statistics
import time

import torch

# (label, M, K, N): [M, K] x [K, N]
SHAPES = [
    ("square 512", 512, 512, 512),
    ("lm head fwd", 1024, 256, 50304),
    ("qkv fwd", 1024, 256, 768),
    ("fcproj fwd", 1024, 1024, 256),
    ("fc fwd", 1024, 256, 1024),
    ("lm head dW", 50304, 1024, 256),
    ("lm head dX", 1024, 50304, 256),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    rows = []
    for label, M, K, N in SHAPES:
        x, w = torch.randn(M, K), torch.randn(K, N)
        out = torch.empty(M, N)
        torch.matmul(x, w, out=out)  # warm-up
        times, cpu = [], 0.0
        for _ in range(a.reps):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.matmul(x, w, out=out)
            times.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
        median = statistics.median(times)
        rows.append({"shape": label, "m": M, "k": K, "n": N, "median_s": median,
                     "gflops": 2 * M * K * N / median / 1e9,
                     # CPU time / wall time; ~threads when the cores were not shared
                     "cpu_utilisation": cpu / sum(times)})

    if a.json:
        print(json.dumps({"framework": f"torch {torch.__version__}", "threads": a.threads,
                          "reps": a.reps, "results": rows}))
        return
    print(f"torch {torch.__version__}, {a.threads} threads, median of {a.reps}")
    print(f"{'shape':<12} {'[M,K] x [K,N]':>26} {'ms':>9} {'GFLOP/s':>9} {'CPU util':>9}")
    for r in rows:
        dims = f"[{r['m']},{r['k']}]x[{r['k']},{r['n']}]"
        print(f"{r['shape']:<12} {dims:>26} {r['median_s'] * 1e3:9.2f} {r['gflops']:9.1f} "
              f"{r['cpu_utilisation']:9.2f}")


if __name__ == "__main__":
    main()
