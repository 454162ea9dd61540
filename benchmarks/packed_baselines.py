"""The baselines on packed input: torch's own packed path against grukit's padded calls per length.

    python benchmarks/packed_baselines.py [--threads 1] [--rounds 5] [--json OUT.json]

grukit's ``lstm`` and ``rnn_tanh`` (and ``gru`` on backend ``torch``) run torch's
nn.LSTM/nn.RNN/nn.GRU. Given a PackedSequence on CPU, torch's backward grows as the square of
the steps, while a padded call runs oneDNN's fused RNN; grukit therefore runs a packed input as
padded calls (``grukit.rnn._packed_plan``: one call when every length is equal, else one per
layer-direction with h_n gathered at each sequence's end). This script times one training step
(forward, a sum of the outputs and h_n, backward) of each baseline, interleaved in one process
(median of the rounds): torch's module on padded input, the same module on the packed input, and
grukit's module on the packed input, and checks that grukit's outputs and gradients equal the
packed call's. Shapes: MNIST pixels (784 steps of 1, batch 128, every length equal, the sizes of
the variant study), JapaneseVowels-like batches (7-29 steps of 12, batch 32, bidirectional) and
long batches of unequal lengths (100-400 steps of 8, batch 64; every length, or four).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import grukit

# name -> (T_max, N, input, bidirectional, equal lengths, {variant: hidden})
SHAPES: dict[str, tuple[int, int, int, bool, bool, dict[str, int]]] = {
    "mnist-pixels": (784, 128, 1, False, True, {"rnn_tanh": 82, "lstm": 41, "gru": 48}),
    "vowels-like": (29, 32, 12, True, False, {"rnn_tanh": 64, "lstm": 27, "gru": 32}),
    "long-varied": (400, 64, 8, False, False, {"rnn_tanh": 82, "lstm": 41, "gru": 48}),
    "long-bucketed": (400, 64, 8, False, False, {"rnn_tanh": 82, "lstm": 41, "gru": 48}),
}
TORCH = {"rnn_tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _step(module: nn.Module, x: Any) -> list[torch.Tensor]:
    module.zero_grad(set_to_none=True)
    out, h_n = module(x)
    out_t = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
    states = h_n if isinstance(h_n, tuple) else (h_n,)
    loss = out_t.sum() + sum(s.sum() for s in states)
    loss.backward()
    return [out_t.detach(), *(s.detach() for s in states)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference relative to the largest magnitude."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def measure(threads: int, rounds: int) -> dict[str, Any]:
    """Milliseconds per training step of every baseline on every shape, three ways."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {}
    for shape, (T, N, F, bi, equal, sizes) in SHAPES.items():
        if equal:
            lengths = torch.full((N,), T)
        else:
            lengths = torch.randint(max(7, T // 4), T + 1, (N,), generator=gen)
            if shape == "long-bucketed":  # four lengths, as a length-bucketing loader gives
                lengths = (lengths + 99) // 100 * 100
            lengths[0] = T
        padded = torch.randn(T, N, F, generator=gen)
        packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
        for variant, H in sizes.items():
            torch.manual_seed(0)
            ref = TORCH[variant](F, H, bidirectional=bi)
            backend = "torch" if variant == "gru" else "auto"
            ours = grukit.GRU(F, H, bidirectional=bi, variant=variant, backend=backend)
            ours.load_state_dict(ref.state_dict())
            a, b = _step(ref, packed), _step(ours, packed)
            err = max(_rel(p, q) for p, q in zip(a, b, strict=True))
            grads = dict(ref.named_parameters())
            gerr = max(_rel(p.grad, grads[n].grad) for n, p in ours.named_parameters())
            runs = {
                "torch padded": lambda m=ref, x=padded: _step(m, x),
                "torch packed": lambda m=ref, x=packed: _step(m, x),
                "grukit packed": lambda m=ours, x=packed: _step(m, x),
            }
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(rounds):
                order = list(runs)
                random.shuffle(order)
                for key in order:
                    t0 = time.perf_counter()
                    runs[key]()
                    times[key].append((time.perf_counter() - t0) * 1e3)
            row = {k: statistics.median(v) for k, v in times.items()}
            row.update(rel_diff_outputs=err, rel_diff_grads=gerr, hidden=H)
            results[f"{shape} {variant}"] = row
            print(
                f"{shape:13s} {variant:9s} H={H:3d}  "
                + "  ".join(f"{k} {row[k]:8.1f} ms" for k in runs)
                + f"  packed/grukit {row['torch packed'] / row['grukit packed']:5.1f}x"
                + f"  rel. diff {max(err, gerr):.1e}",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from grukit.bench import machine_line

    torch.set_num_threads(args.threads)
    print(machine_line())
    results = measure(args.threads, args.rounds)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
