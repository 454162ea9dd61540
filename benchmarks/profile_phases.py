"""Milliseconds per kernel phase (``grukit.fused.profile``) of a fused ``gru`` training step,
plain and with in-cell options, at one of the benchmark's shapes.

    python benchmarks/profile_phases.py --shape S2 --layer-norm
"""

from __future__ import annotations

import argparse

import torch

import grukit
from grukit import fused
from grukit.bench import SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="S2", choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=20, help="training steps profiled")
    parser.add_argument("--layer-norm", action="store_true")
    parser.add_argument("--recurrent-dropout", type=float, default=0.0)
    parser.add_argument("--zoneout", type=float, default=0.0)
    args = parser.parse_args()
    s = SHAPES[args.shape]
    options = {
        "layer_norm": args.layer_norm,
        "recurrent_dropout": args.recurrent_dropout,
        "zoneout": args.zoneout,
    }
    x = torch.randn(s.steps, s.batch, s.input)
    rows = {}
    for label, kw in (("plain", {}), ("with the options", options)):
        m = grukit.GRU(s.input, s.hidden, backend="fused", **kw)

        def train(m: torch.nn.Module = m) -> None:
            for _ in range(args.steps):
                out, _ = m(x)
                out.sum().backward()

        train()  # warm-up
        rows[label] = {k: v / args.steps * 1e3 for k, v in fused.profile(train).items()}
    print(f"{s}, {torch.get_num_threads()} threads; ms per training step; options: {options}")
    print("| phase | plain | with the options | difference |")
    print("|---|---:|---:|---:|")
    for phase in rows["plain"]:
        a, b = rows["plain"][phase], rows["with the options"][phase]
        print(f"| {phase} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    a, b = sum(rows["plain"].values()), sum(rows["with the options"].values())
    print(f"| total | {a:.2f} | {b:.2f} | {b - a:+.2f} |")


if __name__ == "__main__":
    main()
