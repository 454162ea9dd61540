"""The hyperparameter searches behind the README's JSB results, one single-threaded run per process.

    python benchmarks/jsb_search.py --grid small --data PATH/JSB_Chorales.mat --procs 2
    python benchmarks/jsb_search.py --grid large --data jsb --procs 15 --out large.jsonl

Grids:
  ``small``  the 20K-parameter GRU (46 units) without weight noise: learning rate x batch size x
             weight average x seed, plus a few dropout settings (80 runs);
  ``chung``  GRU-46, LSTM-36, tanh-100 with weight noise: optimiser x learning rate x noise x seed
             (72 runs);
  ``large``  wider and deeper GRUs with dropout and/or weight noise (15 runs);
  ``cell``   the in-cell regularisers on the larger GRU (256 units, the ``jsb_large`` settings):
             each alone, with and without weight noise, and in combinations (the README's
             ablation table; ``--seeds``, default 2);
  ``chung_cell`` the 20K-parameter GRU-46 under Chung et al.'s protocol (``chung2014``, weight
             noise included) with in-cell regularisers added (``--seeds``, default 2).
Each finished run appends one JSON line (its settings and train/valid/test NLL) to ``--out``;
``--report`` prints the table of a finished search (mean and range over seeds per setting).
On 2 cores the small grid takes about 40 minutes; it parallelises across as many cores as given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import re
import time
from typing import Any


def grid(which: str, seeds: int = 2) -> list[tuple[str, dict[str, Any]]]:
    items: list[tuple[str, dict[str, Any]]] = []
    if which == "small":
        base = dict(variant="gru", hidden_size=46, epochs=300, patience=30, clip_grad_norm=5.0,
                    output_dropout=0.0, weight_noise=0.0)  # fmt: skip
        for lr, bs, ema, seed in itertools.product(
            [5e-4, 1e-3, 2e-3], [1, 2, 4, 8], [0.0, 0.99, 0.999], [0, 1]
        ):
            items.append((f"s_lr{lr}_bs{bs}_ema{ema}_s{seed}",
                          dict(base, lr=lr, batch_size=bs, ema=ema, seed=seed)))  # fmt: skip
        for od, idr, seed in itertools.product([0.1, 0.2], [0.0, 0.1], [0, 1]):
            items.append((f"s_od{od}_id{idr}_s{seed}",
                          dict(base, lr=1e-3, batch_size=2, ema=0.99, output_dropout=od,
                               input_dropout=idr, seed=seed)))  # fmt: skip
    elif which == "chung":
        for model, hidden in (("gru", 46), ("lstm", 36), ("rnn_tanh", 100)):
            for opt, lr, wn, seed in itertools.product(
                ["adam", "rmsprop"], [5e-4, 1e-3, 2e-3], [0.05, 0.075], [0, 1]
            ):
                items.append((f"c_{model}_{opt}_lr{lr}_wn{wn}_s{seed}",
                              dict(variant=model, hidden_size=hidden, epochs=300, patience=30,
                                   clip_grad_norm=1.0, output_dropout=0.0, batch_size=2,
                                   optimizer=opt, lr=lr, weight_noise=wn, ema=0.0,
                                   seed=seed)))  # fmt: skip
    elif which == "large":
        base = dict(variant="gru", epochs=150, patience=20, clip_grad_norm=5.0, ema=0.99,
                    batch_size=8, lr=1e-3)  # fmt: skip
        # hidden, layers, dropout, output dropout, input dropout, weight noise, other settings
        configs: list[tuple[int, int, float, float, float, float, dict[str, Any]]] = [
            (256, 2, 0.3, 0.5, 0.2, 0.0, {}), (256, 2, 0.3, 0.5, 0.2, 0.02, {}),
            (256, 2, 0.3, 0.5, 0.2, 0.04, {}), (256, 1, 0.0, 0.5, 0.2, 0.03, {}),
            (512, 1, 0.0, 0.5, 0.2, 0.02, {}), (384, 2, 0.4, 0.5, 0.2, 0.02, {}),
            (128, 2, 0.2, 0.3, 0.0, 0.05, {}), (128, 1, 0.0, 0.3, 0.0, 0.075, {}),
            (256, 1, 0.0, 0.0, 0.0, 0.05, {}), (256, 1, 0.0, 0.0, 0.0, 0.075, {}),
            (512, 1, 0.0, 0.0, 0.0, 0.075, {}), (256, 2, 0.0, 0.0, 0.0, 0.05, {}),
            (192, 3, 0.3, 0.5, 0.2, 0.02, {}), (256, 2, 0.5, 0.6, 0.3, 0.02, {}),
            (256, 2, 0.3, 0.5, 0.2, 0.02, {"weight_decay": 1e-4}),
        ]  # fmt: skip
        for hs, nl, dr, od, idr, wn, extra in configs:
            kw = dict(base, hidden_size=hs, num_layers=nl, dropout=dr, output_dropout=od,
                      input_dropout=idr, weight_noise=wn, **extra)  # fmt: skip
            tag = "_".join(f"{k}{v}" for k, v in extra.items())
            items.append((f"l_h{hs}x{nl}_d{dr}_od{od}_id{idr}_wn{wn}{tag}", kw))
    elif which == "cell":
        base = dict(variant="gru", hidden_size=256, num_layers=1, optimizer="adam", lr=1e-3,
                    batch_size=8, ema=0.99, clip_grad_norm=5.0, epochs=200, patience=25,
                    weight_noise=0.0)  # fmt: skip
        settings: list[tuple[str, dict[str, Any]]] = [
            ("none", {}),
            ("wn", {"weight_noise": 0.075}),
            ("rd", {"recurrent_dropout": 0.25}),
            ("cd", {"candidate_dropout": 0.25}),
            ("zo", {"zoneout": 0.15}),
            ("ln", {"layer_norm": True}),
            ("wd", {"weight_drop": 0.25}),
            ("zo+rd", {"zoneout": 0.15, "recurrent_dropout": 0.25}),
            ("wn+rd", {"weight_noise": 0.075, "recurrent_dropout": 0.25}),
            ("wn+zo", {"weight_noise": 0.075, "zoneout": 0.15}),
            ("wn+ln", {"weight_noise": 0.075, "layer_norm": True}),
            ("wn+zo+rd", {"weight_noise": 0.075, "zoneout": 0.15, "recurrent_dropout": 0.25}),
            ("rd0.4", {"recurrent_dropout": 0.4}),
            ("rd+cd", {"recurrent_dropout": 0.25, "candidate_dropout": 0.25}),
            ("rd+wd", {"recurrent_dropout": 0.25, "weight_drop": 0.25}),
            ("rd0.4+zo0.1", {"recurrent_dropout": 0.4, "zoneout": 0.1}),
            ("ln+rd0.4", {"layer_norm": True, "recurrent_dropout": 0.4}),
            ("ln+rd0.4+zo0.1", {"layer_norm": True, "recurrent_dropout": 0.4, "zoneout": 0.1}),
            ("rd0.4_long", {"recurrent_dropout": 0.4, "epochs": 400, "patience": 40}),
            (
                "rd0.4+wd_long",
                {"recurrent_dropout": 0.4, "weight_drop": 0.25, "epochs": 400, "patience": 40},
            ),
        ]
        for (tag, extra), seed in itertools.product(settings, range(seeds)):
            items.append((f"cell_{tag}_s{seed}", dict(base, seed=seed, **extra)))
    elif which == "chung_cell":
        base = dict(variant="gru", hidden_size=46, epochs=300, patience=30, clip_grad_norm=1.0,
                    output_dropout=0.0, batch_size=2, optimizer="rmsprop", lr=1e-3,
                    weight_noise=0.075, ema=0.0)  # fmt: skip
        settings = [
            ("none", {}),
            ("zo0.1", {"zoneout": 0.1}),
            ("rd0.1", {"recurrent_dropout": 0.1}),
            ("zo0.1+rd0.1", {"zoneout": 0.1, "recurrent_dropout": 0.1}),
            ("ln", {"layer_norm": True}),
        ]
        for (tag, extra), seed in itertools.product(settings, range(seeds)):
            items.append((f"cc_{tag}_s{seed}", dict(base, seed=seed, **extra)))
    else:
        raise SystemExit(f"unknown grid {which!r}: small, chung, large, cell or chung_cell")
    return items


def run(job: tuple[str, dict[str, Any], str, str]) -> dict[str, Any]:
    """One training run on one thread; returns its settings and NLLs (or the error)."""
    name, kw, data, runs_dir = job
    import torch

    torch.set_num_threads(1)
    from grukit.runconfig import make_config
    from grukit.tasks import load_task
    from grukit.tune import train_and_score

    start = time.time()
    try:
        task = load_task("music", data, progress=False)
        config = make_config(data=data, out=f"{runs_dir}/{name}", progress=False, **kw)
        _, r = train_and_score(config, task=task, log=lambda s: None)
        return {"name": name, **kw, "train": r["train"]["nll"], "valid": r["valid"]["nll"],
                "test": r["test"]["nll"], "best_epoch": r["best_epoch"], "epochs_run": r["epochs"],
                "parameters": r["parameters"], "seconds": round(time.time() - start)}  # fmt: skip
    except Exception as exc:  # one failed run must not end the search
        return {"name": name, **kw, "error": repr(exc)}


def report(path: str) -> str:
    """A markdown table of a search's finished runs: mean (and spread) over seeds per setting."""
    rows: dict[str, list[dict[str, Any]]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if "error" not in r:
                    rows.setdefault(r["name"].rsplit("_s", 1)[0], []).append(r)
    out = ["| setting | seeds | parameters | train NLL | valid NLL | test NLL | best epoch |",
           "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip

    def cell(runs: list[dict[str, Any]], key: str) -> str:
        values = [r[key] for r in runs]
        mean = sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:.2f}"
        return f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})"

    for name, runs in rows.items():
        best = "/".join(str(r["best_epoch"]) for r in runs)
        out.append(f"| {name} | {len(runs)} | {runs[0]['parameters']} | {cell(runs, 'train')} | "
                   f"{cell(runs, 'valid')} | {cell(runs, 'test')} | {best} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grid", required=True, choices=["small", "chung", "large", "cell", "chung_cell"]
    )
    parser.add_argument(
        "--report", action="store_true", help="print the table of --out's finished runs and stop"
    )
    parser.add_argument("--data", default="jsb", help="jsb (downloads) or a local JSB file")
    parser.add_argument("--procs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--out", default=None, help="JSON lines (default GRID.jsonl)")
    parser.add_argument("--runs-dir", default="runs/search", help="folder for the run folders")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per setting (cell grids)")
    parser.add_argument("--only", default=None, help="run only the names this regex matches")
    parser.add_argument(
        "--skip-done", action="store_true", help="skip the names already in --out (resume)"
    )
    args = parser.parse_args()
    if args.report:
        print(report(args.out or f"{args.grid}.jsonl"))
        return
    from grukit import fused

    fused.available()  # build the kernels once, before the workers start
    jobs = [(name, kw, args.data, args.runs_dir) for name, kw in grid(args.grid, args.seeds)]
    out = args.out or f"{args.grid}.jsonl"
    if args.only:
        jobs = [j for j in jobs if re.search(args.only, j[0])]
    if args.skip_done and os.path.exists(out):
        with open(out) as f:
            done = {json.loads(line)["name"] for line in f if line.strip()}
        jobs = [j for j in jobs if j[0] not in done]
    print(f"{len(jobs)} runs, {args.procs} at a time, into {out}", flush=True)
    with mp.get_context("spawn").Pool(args.procs) as pool, open(out, "a") as f:
        for result in pool.imap_unordered(run, jobs):
            f.write(json.dumps(result) + "\n")
            f.flush()
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
