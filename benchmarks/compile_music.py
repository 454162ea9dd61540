"""What torch.compile gains around grukit's fused layer on the music task: a training step
(forward, the next-frame loss, backward) of the music model, eager against
``torch.compile(step, fullgraph=True)``, interleaved rounds in one process.

    python benchmarks/compile_music.py [--hidden 46,256] [--rounds 15] [--threads N]

Only the backward call stays outside the compiled function (``loss.backward()`` cannot be
traced; the backward graph is compiled all the same). The recurrent layer runs the same fused
kernel either way (a custom operator with a fake
version, so the compiled graph keeps it whole); what inductor can fuse is the read-out, the
sigmoid cross-entropy and their backward. Prints the median milliseconds per step and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from grukit.bench import machine_line
from grukit.models import SequenceModel
from grukit.runconfig import ModelConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="46,256", help="comma-separated hidden sizes")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch")
    parser.add_argument("--steps", type=int, default=128, help="frames per sequence")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    print("| hidden | eager ms/step | compiled ms/step | compiled / eager |")
    print("|---:|---:|---:|---:|")
    for H in (int(h) for h in args.hidden.split(",")):
        torch.manual_seed(0)
        model = SequenceModel(88, 88, ModelConfig(hidden_size=H))
        x = (torch.rand(args.steps, args.batch, 88) < 0.05).float()

        def loss_of(inputs: torch.Tensor, model: SequenceModel = model) -> torch.Tensor:
            logits, _ = model(inputs[:-1])
            return F.binary_cross_entropy_with_logits(logits, inputs[1:], reduction="sum")

        torch._dynamo.reset()
        compiled = torch.compile(loss_of, fullgraph=True)  # its backward graph is compiled too
        for fn in (loss_of, compiled):  # warm up (the compile happens here)
            for _ in range(3):
                fn(x).backward()
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for name, fn in (("eager", loss_of), ("compiled", compiled)):
                start = time.perf_counter()
                for _ in range(5):
                    fn(x).backward()
                times[name].append((time.perf_counter() - start) / 5 * 1e3)
        eager, comp = (statistics.median(times[k]) for k in ("eager", "compiled"))
        print(f"| {H} | {eager:.2f} | {comp:.2f} | {comp / eager:.2f} |")


if __name__ == "__main__":
    main()
