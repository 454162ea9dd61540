"""The GRU-variant study: ``grukit compare`` over every GRU-family variant plus ``lstm`` and
``rnn_tanh`` on six tasks, parameter-matched, three seeds, a short fixed budget per task.

    python benchmarks/variant_study.py run --tasks mnist-rows,jsb --out runs/variant-study
    python benchmarks/variant_study.py run --tasks mnist-pixels --out runs/variant-study
    python benchmarks/variant_study.py cost --out runs/variant-study
    python benchmarks/variant_study.py table --out runs/variant-study

``run`` trains one task after another (one thread each: start two processes with different
``--tasks``, or ``--only`` different variants of one task, to use two cores) and writes
``OUT/TASK.json`` (the comparison's rows) and the run folders under ``OUT/TASK/``; run again, it
keeps the finished run folders and resumes a killed one (as ``grukit compare`` does).
``cost`` times one training step (forward, loss, backward) of every variant's model of a task,
at the study's sizes, on a few of the task's own training batches, the variants interleaved in
one process and repeated (median of the rounds), and writes ``OUT/TASK.cost.json``: the
cost column of the table, a fairer one than the runs' seconds per epoch when several runs
shared the cores. ``table`` prints one Markdown table per finished task. Every model of a task
is sized to the task's ``gru`` reference (the units in :data:`TASKS`) by
:func:`grukit.compare.matched_hidden_size` (the music task keeps the sizes of its own list,
Chung et al.'s LSTM-36 and tanh-RNN-100); every model gets the same settings and budget
(epochs, not minutes), so the metric columns compare what each variant learns in that budget
and the cost columns what it costs. Data come from ``--shared`` (the workplace's copies)
so the study runs offline; each ``data`` below is the spelling ``grukit train --data`` takes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

VARIANTS = (
    "gru", "gru_reset_before", "gru1", "gru2", "gru3",
    "mgu", "mgu1", "mgu2", "mgu3", "mingru", "lstm", "rnn_tanh",
)  # fmt: skip
SEEDS = 3

# task name -> (packaged config, data spelling ({shared} = --shared), gru units, overrides, what)
TASKS: dict[str, tuple[str, str, int, dict[str, Any], str]] = {
    "mnist-rows": (
        "mnist_rows",
        "mnist-rows:{shared}/mnist/mnist.npz",
        48,
        {"optim.epochs": 3},
        "MNIST read row by row (28 steps of 28 pixels), test accuracy, 3 epochs (cosine)",
    ),
    "mnist-pixels": (
        "mnist_rows",
        "mnist-pixels:{shared}/mnist/mnist.npz",
        48,
        {"optim.epochs": 2},
        "MNIST read pixel by pixel (784 steps of 1), test accuracy, 2 epochs (cosine)",
    ),
    "japanesevowels": (
        "japanesevowels",
        "{shared}/classification",
        32,
        {"optim.epochs": 60, "optim.patience": 0},
        "JapaneseVowels, bidirectional, test accuracy, 60 epochs",
    ),
    "jsb": (
        "chung2014",
        "{shared}/polyphonic/JSB_Chorales.mat",
        46,
        {"optim.epochs": 20, "optim.patience": 0, "optim.lr": 0.002},
        "JSB Chorales under Chung et al.'s protocol (RMSProp, weight noise), test NLL per "
        "frame, 20 epochs at learning rate 0.002",
    ),
    "sunspots": (
        "sunspots",
        "sunspots",
        32,
        {"optim.epochs": 60, "optim.patience": 0, "task.baselines": False},
        "yearly sunspots, 10-year horizon from 32 years, test MASE, 60 epochs",
    ),
    "shakespeare": (
        "shakespeare_char",
        "{shared}/text/tinyshakespeare.txt",
        128,
        {"task.steps_per_epoch": 50, "optim.epochs": 4, "optim.patience": 0},
        "Tiny Shakespeare (nanoGPT's split), validation nats per character after 200 chunks "
        "of 64x128 characters (1.6M characters, about 1.6 passes)",
    ),
}


def run_task(
    task: str, out: Path, shared: Path, threads: int, only: list[str] | None = None
) -> dict[str, Any]:
    """Train every variant of ``task`` (or those in ``only``) over :data:`SEEDS` seeds and
    return the report; the whole task's report is also written to ``OUT/TASK.json``."""
    from grukit.compare import compare

    config, data, units, overrides, _ = TASKS[task]
    settings = {
        "task.data": data.format(shared=shared), "run.threads": threads,
        "run.progress": False, **overrides,
    }  # fmt: skip
    log_file = (out / f"{task}.log").open("a")

    def log(text: str) -> None:
        log_file.write(text + "\n")
        log_file.flush()

    models = [("gru", units)] + [(v, None) for v in VARIANTS if v != "gru"]
    report = compare(
        config=config, overrides=settings, models=models, lrs=[], seeds=SEEDS,
        out=out / task, log=log, only=only,
    )  # fmt: skip
    report["study"] = {"task": task, "budget": TASKS[task][4], "settings": settings}
    import torch

    from grukit.bench import machine_line

    torch.set_num_threads(threads)  # the runs' count, also when every run was already done
    report["machine"] = machine_line()
    if only:  # a part: `run` without --only collects the finished parts into OUT/TASK.json
        log_file.close()
        return report
    target = out / f"{task}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, target)
    log_file.close()
    return report


def step_costs(
    task: str, out: Path, shared: Path, threads: int, rounds: int = 7, batches: int = 3
) -> dict[str, Any]:
    """Milliseconds per training step of each variant's model of ``task`` (sized as in
    ``OUT/TASK.json``): ``batches`` of the task's training batches, forward, loss and backward,
    the variants interleaved in a new order each round; the median over ``rounds``. Written to
    ``OUT/TASK.cost.json``."""
    import dataclasses
    import random
    import statistics
    import time
    from itertools import islice

    import torch

    from grukit.tasks import load_task
    from grukit.train import config_from_args

    report = json.loads((out / f"{task}.json").read_text())
    config, data, _, overrides, _ = TASKS[task]
    settings = {"task.data": data.format(shared=shared), "run.progress": False, **overrides}
    base = config_from_args(config, settings, announce=lambda s: None)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    loaded = load_task(base.task, progress=False)
    loaded.start_epoch(1)
    feed = list(islice(loaded.batches("train", base.optim.batch_size), batches))
    models = {
        r["variant"]: loaded.build_model(
            dataclasses.replace(base.model, variant=r["variant"], hidden_size=r["hidden_size"]),
            base.cell,
        ).train()
        for r in report["models"]
    }  # fmt: skip

    def steps(model: torch.nn.Module, repeat: int) -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            loaded.reset_progress()  # the char-LM's carried state belongs to one model
            for batch in feed:
                model.zero_grad(set_to_none=True)
                loss, count = loaded.loss(model, batch)
                (loss / count).backward()
        return (time.perf_counter() - start) / (repeat * len(feed))

    # a warm-up pass (kernel loads, allocator) sets how often each round repeats the batches,
    # so that one measurement lasts at least 0.1 s
    repeat = {v: max(1, round(0.1 / (steps(m, 1) * len(feed)))) for v, m in models.items()}
    times: dict[str, list[float]] = {v: [] for v in models}
    order = list(models)
    for round_ in range(rounds):
        random.Random(round_).shuffle(order)
        for variant in order:
            times[variant].append(steps(models[variant], repeat[variant]))
    from grukit.bench import machine_line

    ms = {v: 1000 * statistics.median(t) for v, t in times.items()}
    cost = {
        "task": task, "rounds": rounds, "batches": len(feed), "threads": threads,
        "machine": machine_line(), "ms_per_step": ms,
        "vs_gru": {v: t / ms["gru"] for v, t in ms.items()},
    }  # fmt: skip
    (out / f"{task}.cost.json").write_text(json.dumps(cost, indent=1))
    return cost


def format_task(report: dict[str, Any], cost: dict[str, Any] | None = None) -> str:
    """One Markdown table of a task's report: mean ± std over seeds, seconds per epoch in the
    study, and (with ``cost``) the interleaved step time of :func:`step_costs`."""
    m, mode = report["monitor"], report["mode"]
    rows = sorted(
        report["models"],
        key=lambda r: r[f"test_{m}"] if "test_" + m in r else r[f"valid_{m}"],
        reverse=mode == "max",
    )
    split = "test" if any(r.get(f"test_{m}") is not None for r in rows) else "valid"
    ref = next(r for r in rows if r["variant"] == "gru")
    lines = [
        f"**{report['study']['task']}**: {report['study']['budget']} "
        f"({'higher' if mode == 'max' else 'lower'} is better; mean ± std over "
        f"{ref['seeds']} seeds)",
        "",
        f"| variant | units | parameters | {split} {m} | "
        + (f"valid {m} | " if split == "test" else "")  # a task without a test split: once
        + f"train {m} | s/epoch | "
        + ("ms/step | step vs gru |" if cost else "s/epoch vs gru |"),
        "|---|---:|---:|---:|"
        + ("---:|" if split == "test" else "")
        + "---:|---:|---:|"
        + ("---:|" if cost else ""),
    ]
    for r in rows:
        v = r["variant"]
        last = (
            f"{cost['ms_per_step'][v]:.1f} | {cost['vs_gru'][v]:.2f} |"
            if cost
            else f"{r['seconds_per_epoch'] / ref['seconds_per_epoch']:.2f} |"
        )
        lines.append(
            f"| {v} | {r['hidden_size']} | {r['parameters']:,} | "
            f"{r[f'{split}_{m}']:.4f} ± {r[f'{split}_{m}_std']:.4f} | "
            + (f"{r[f'valid_{m}']:.4f} ± {r[f'valid_{m}_std']:.4f} | " if split == "test" else "")
            + f"{r[f'train_{m}']:.4f} | "
            f"{r['seconds_per_epoch']:.2f} | {last}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "cost", "table"))
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of " +
                        ", ".join(TASKS))  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/variant-study"))
    parser.add_argument("--shared", type=Path, default=Path("../shared/data").resolve())
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--only", help="train just these variants (one part of a task, for another core); "
        "a later `run` without it reuses every finished run folder"
    )  # fmt: skip
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}: expected some of {', '.join(TASKS)}")
    if args.command == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        only = [v.strip() for v in args.only.split(",")] if args.only else None
        for task in tasks:
            if (args.out / f"{task}.json").is_file():
                print(f"{task}: done already ({args.out / task}.json)")
                continue
            print(f"{task}: training {len(only or VARIANTS)} models x {SEEDS} seeds", flush=True)
            run_task(task, args.out, args.shared, args.threads, only)
        return 0
    if args.command == "cost":
        for task in tasks:
            cost = step_costs(task, args.out, args.shared, args.threads)
            print(task, {v: round(r, 2) for v, r in cost["vs_gru"].items()}, flush=True)
        return 0
    for task in tasks:
        path = args.out / f"{task}.json"
        if not path.is_file():
            print(f"{task}: not run yet ({path} is absent)", file=sys.stderr)
            continue
        report = json.loads(path.read_text())
        cost_path = args.out / f"{task}.cost.json"
        cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
        where = f"Runs: {report.get('machine', '?')}."
        if cost:
            where += f" Step costs: {cost.get('machine', '?')}."
        print(format_task(report, cost) + "\n\n" + where + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
