#!/usr/bin/env python3
"""PyTorch benchmark peer for convoy's GPT-2 training step.

GPT-2 (llm.c architecture: weight-tied LM head over a padded vocabulary,
pre-LayerNorm blocks, tanh GELU), AdamW with weight decay on the 2-D weights,
trained on random tokens. Attention is written out explicitly by default
(materialised [B, NH, T, T] scores, mask, softmax) so it does the same work as
convoy's engine; `--sdpa` uses F.scaled_dot_product_attention instead.
On the CPU it runs eager fp32. `--device cuda` runs on GPU 0 with `--dtype`
fp32 (TF32 off) or bf16 (autocast, fp32 master weights, fused AdamW), and
`--compile` adds torch.compile; `--peak-tflops` turns tokens/s into MFU with
llm.c's count of 6N + 6·L·C·T FLOPs per token. Not part of CI.
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, NH, sdpa):
        super().__init__()
        self.NH, self.sdpa = NH, sdpa
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.attproj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        return self.attproj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.V = a.vocab
        self.wte = nn.Embedding(a.padded_vocab, a.channels)
        self.wpe = nn.Embedding(a.seq_len, a.channels)
        self.blocks = nn.ModuleList(Block(a.channels, a.heads, a.sdpa) for _ in range(a.layers))
        self.lnf = nn.LayerNorm(a.channels)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * a.layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.lnf(x) @ self.wte.weight.T  # weight-tied, all Vp columns
        return F.cross_entropy(logits[..., : self.V].flatten(0, 1), targets.flatten())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in [("layers", 4), ("channels", 256), ("heads", 4), ("seq-len", 128),
                          ("batch", 8), ("vocab", 50257), ("padded-vocab", 50304),
                          ("threads", 2), ("steps", 20), ("warmup", 3), ("seed", 0)]:
        ap.add_argument(f"--{flag}", type=int, default=default)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--sdpa", action="store_true", help="use F.scaled_dot_product_attention")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="the device's peak for --dtype, to report MFU")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cuda = a.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = GPT(a).to(a.device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if cuda else {}))
    step_model = torch.compile(model) if a.compile else model
    idx = torch.randint(0, a.vocab, (a.batch, a.seq_len), device=a.device)
    targets = torch.randint(0, a.vocab, (a.batch, a.seq_len), device=a.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and a.dtype == "bf16")

    # Process CPU time is recorded too: on a shared machine, CPU time / wall time
    # well below the thread count means the step was competing for cores.
    times, cpu_times, losses = [], [], []
    for step in range(a.warmup + a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast:
            loss = step_model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if step >= a.warmup:
            times.append(dt)
            cpu_times.append(dc)
            losses.append(loss.item())

    n = sum(p.numel() for p in params)
    median = statistics.median(times)
    tokens_per_s = a.batch * a.seq_len / median
    flops_per_token = 6 * n + 6 * a.layers * a.channels * a.seq_len
    result = {
        "framework": f"torch {torch.__version__}", "threads": a.threads,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": a.dtype, "compile": a.compile,
        "mfu": tokens_per_s * flops_per_token / (a.peak_tflops * 1e12) if a.peak_tflops else None,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "attention": "sdpa" if a.sdpa else "explicit",
        "config": {k: getattr(a, k) for k in ("layers", "channels", "heads", "seq_len",
                                             "batch", "vocab", "padded_vocab")},
        "params": n, "steps": a.steps, "warmup": a.warmup,
        "median_step_s": median, "min_step_s": min(times), "max_step_s": max(times),
        "tokens_per_s": tokens_per_s,
        "median_step_cpu_s": statistics.median(cpu_times),
        "cpu_utilisation": sum(cpu_times) / sum(times),  # ~threads when uncontended
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # KB on Linux
        # fp32 params + grads + AdamW m and v; activations etc. make up the rest of RSS
        "bytes_params": 4 * n, "bytes_grads": 4 * n, "bytes_optimizer": 8 * n,
        "first_loss": losses[0], "last_loss": losses[-1],
    }
    if a.json:
        print(json.dumps(result))
        return
    mib = lambda b: f"{b / 2**20:.1f} MiB"
    print(f"{result['framework']}, {a.threads} threads, {result['attention']} attention, "
          f"{n:,} parameters")
    print(f"median step  {median * 1e3:.1f} ms  (min {min(times) * 1e3:.1f}, "
          f"max {max(times) * 1e3:.1f}, {a.steps} steps after {a.warmup} warmup)")
    print(f"tokens/s     {result['tokens_per_s']:.0f}")
    print(f"CPU time     {result['median_step_cpu_s'] * 1e3:.1f} ms/step median, "
          f"utilisation {result['cpu_utilisation']:.2f} of {a.threads} threads")
    print(f"peak RSS     {mib(result['peak_rss_kb'] * 1024)}  (params {mib(4 * n)}, "
          f"grads {mib(4 * n)}, AdamW state {mib(8 * n)})")
    print(f"loss         {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
