"""Where a fused ``gru`` training step spends its time beside busy processes: ``torch.profiler``'s
table of ops (the kernels' own calls and torch's, the loss included) over timed steps.

    python benchmarks/profile_contention.py --shape S3 --busy 1 --policy one

``--policy``: the kernels' thread policy (``grukit.fused.set_thread_policy``); ``one`` holds the
kernels to one thread, so what is left on two threads is torch's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import grukit
from grukit import fused
from grukit.bench import SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="S3", choices=list(SHAPES))
    parser.add_argument("--busy", type=int, default=1, help="busy processes beside the steps")
    parser.add_argument("--policy", default="adaptive", choices=fused.THREAD_POLICIES)
    parser.add_argument("--steps", type=int, default=20, help="training steps profiled")
    args = parser.parse_args()
    s = SHAPES[args.shape]
    torch.manual_seed(0)
    x = torch.rand(s.steps, s.batch, s.input) - 0.5
    m = grukit.GRU(s.input, s.hidden)
    params = list(m.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        out, _ = m(x)
        out.sum().backward()

    fused.set_thread_policy(args.policy)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(0.3)
        for _ in range(args.steps):  # warm-up, and the thread choice under this load
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    print(f"{s}, {args.busy} busy process(es), thread policy {args.policy!r}, {args.steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
