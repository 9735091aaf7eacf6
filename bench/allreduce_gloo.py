"""Bus bandwidth of PyTorch's Gloo all-reduce on loopback, the peer of
collective/examples/allreduce_bench.rs: same sizes, one process per rank, 2 warm-up iterations,
then N timed ones each after a barrier; rank 0 reports the median.
busbw = 2(n-1)/n * bytes / time, bytes = MiB * 2**20.

    GLOO_SOCKET_IFNAME=lo python3 bench/allreduce_gloo.py [--worlds 2,4] [--sizes-mb 4,64,256] [--iters N]
"""

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def default_iters(mb):
    return 30 if mb <= 8 else 10 if mb <= 64 else 5


def worker(rank, world, mb, iters, port, queue):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    buf = torch.full(((mb << 20) // 4,), 1.0 + rank, dtype=torch.float32)
    times = []
    for i in range(2 + iters):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(buf)
        if i >= 2:
            times.append(time.perf_counter() - t)
    if rank == 0:
        times.sort()
        queue.put(times[len(times) // 2])
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--worlds", "--world", default="2,4")
    p.add_argument("--sizes-mb", "--mb", default="4,64,256")
    p.add_argument("--iters", type=int)
    a = p.parse_args()
    print("| impl | ranks | size (MiB) | median time (ms) | busbw (GB/s) |")
    print("|---|---|---|---|---|")
    ctx = mp.get_context("spawn")
    for world in map(int, a.worlds.split(",")):
        for mb in map(int, a.sizes_mb.split(",")):
            queue = ctx.SimpleQueue()
            iters = a.iters or default_iters(mb)
            mp.spawn(worker, args=(world, mb, iters, free_port(), queue), nprocs=world)
            median = queue.get()
            busbw = 2 * (world - 1) / world * (mb << 20) / median / 1e9
            print(f"| torch gloo {torch.__version__} | {world} | {mb} | {median * 1e3:.2f} | {busbw:.3f} |", flush=True)


if __name__ == "__main__":
    main()
