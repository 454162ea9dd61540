"""The ``grukit`` command: train, eval, sample, compare, bench.

Errors that grukit raises on purpose (bad data, config, checkpoint, an offline download) are
printed as one sentence with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grukit.errors import GrukitError

__all__ = ["main"]


def _train_parser(sub: Any) -> None:
    from grukit.configuration import add_dataclass_arguments
    from grukit.train import TrainConfig, packaged_configs

    p = sub.add_parser(
        "train",
        help="train a model (with no flags: a GRU on the Bach chorales shipped with music21)",
        description="Train a model. Settings come from the defaults, then --config FILE (TOML), "
        "then the flags below.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config", metavar="FILE",
        help="TOML file of settings (keys as below, with _), or a packaged config: "
        + ", ".join(packaged_configs()),
    )  # fmt: skip
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN")
    p.add_argument(
        "--sample-length",
        type=int,
        default=64,
        help="frames of the sample drawn at the end (0: none)",
    )
    add_dataclass_arguments(p, TrainConfig)


def _cmd_train(args: argparse.Namespace) -> int:
    from grukit.configuration import overrides_from_namespace
    from grukit.train import TrainConfig, Trainer, config_from_args

    overrides = overrides_from_namespace(args, TrainConfig)
    if args.resume:
        if args.config:
            raise GrukitError("--resume takes the run's own config; do not pass --config too")
        trainer = Trainer.resume(args.resume, overrides=overrides)
    else:
        trainer = Trainer(config_from_args(args.config, overrides))
    result = trainer.fit()
    run = Path(result["run"])
    print(
        f"best epoch {result['best_epoch']} of {result['epochs']} ({result['stopped_by']}); "
        f"NLL per frame: train {result['train']['nll']:.4f}, valid {result['valid']['nll']:.4f}, "
        f"test {result['test']['nll']:.4f}"
    )
    print(f"run folder: {run}  (config.toml, metrics.jsonl, final.json, checkpoints/)")
    if (run / "curves.png").exists():
        print(f"curves:     {run / 'curves.png'}")
    if args.sample_length > 0 and hasattr(trainer.task, "sample"):
        midi, png = _write_sample(
            trainer.task,
            trainer.averaged,
            run / "samples",
            args.sample_length,
            1.0,
            trainer.config.seed,
            0,
        )
        print(f"sample:     {midi}  (piano roll {png})")
    return 0


def _write_sample(
    task: Any, model: Any, folder: Path, length: int, temperature: float, seed: int, prime: int
) -> tuple[Path, Path]:
    import torch

    from grukit.tasks.music.midi import plot_piano_roll, write_midi

    g = torch.Generator().manual_seed(seed)
    primer = task.sequence("test", 0)[:prime] if prime > 0 else None
    roll = task.sample(model, length, prime=primer, temperature=temperature, generator=g).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"sample-seed{seed}"
    midi, png = folder / f"{stem}.mid", folder / f"{stem}.png"
    write_midi(roll, midi)
    plot_piano_roll(roll, png, title=f"sampled, {length} quarter notes, temperature {temperature}")
    return midi, png


def _cmd_eval(args: argparse.Namespace) -> int:
    from grukit.train import evaluate, load_run

    config, task, model = load_run(
        args.run, which=args.checkpoint, data=args.data, device=args.device
    )
    splits = ["train", "valid", "test"] if args.split == "all" else [args.split]
    result: dict[str, Any] = {
        "run": str(args.run),
        "checkpoint": args.checkpoint,
        "data": config.data,
    }
    for split in splits:
        metrics = evaluate(task, model, split)
        if len(splits) == 1:
            result.update(split=split, **metrics)
        else:
            result[split] = metrics
    if args.json:
        print(json.dumps(result))
    else:
        for split in splits:
            m = result if len(splits) == 1 else result[split]
            print(f"{split}: {task.metric} {m[task.metric]:.4f} over {m['frames']} frames")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from grukit.train import load_run

    _, task, model = load_run(args.run, which=args.checkpoint, device=args.device)
    folder = Path(args.out) if args.out else Path(args.run) / "samples"
    midi, png = _write_sample(
        task, model, folder, args.length, args.temperature, args.seed, args.prime
    )
    print(f"wrote {midi} and {png}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from grukit.compare import compare, format_table
    from grukit.configuration import overrides_from_namespace
    from grukit.train import TrainConfig, config_from_args

    overrides = overrides_from_namespace(args, TrainConfig)
    quiet = (lambda s: None) if args.json else print
    base = config_from_args(args.config or "chung2014", overrides, announce=quiet)
    variants = [v.strip() for v in (args.variants or "").split(",") if v.strip()]
    try:
        lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    except ValueError:
        raise GrukitError(f"--lrs takes comma-separated numbers, got {args.lrs!r}") from None
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    report = compare(base, variants=variants, lrs=lrs, out=args.out, log=log)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    return 0


def _compare_parser(sub: Any) -> None:
    from grukit.configuration import add_dataclass_arguments
    from grukit.train import TrainConfig

    p = sub.add_parser(
        "compare",
        help="reproduce Chung et al. 2014: tanh-RNN 100, LSTM 36, GRU 46 units (~20K parameters)",
        description="Train Chung et al.'s three ~20K-parameter models (plus --variants, sized to "
        "the GRU's parameter count) with one set of settings; print their NLL beside the paper's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config", metavar="FILE", default=None,
        help="TOML file (or packaged config name) of shared training settings "
        "(default: chung2014, Chung et al.'s protocol)",
    )  # fmt: skip
    p.add_argument("--variants", default="", help="comma-separated grukit variants to add")
    p.add_argument(
        "--lrs", default="0.0005,0.001,0.002",
        help="learning rates to try per model; the best on validation is kept ('' = --lr)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object (logs go to stderr)")
    p.add_argument("--out", default="runs/compare", help="folder for the runs")
    add_dataclass_arguments(p, TrainConfig, exclude=("variant", "hidden_size", "num_layers", "out"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grukit", description="Train, evaluate, compare and benchmark GRU networks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on a split")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--data", default=None, help="evaluate on this data set instead of the run's")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the run's)")

    p = sub.add_parser(
        "sample", help="generate a piano roll from a trained music model (MIDI + PNG)"
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--length", type=int, default=64, help="frames (quarter notes) to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits")
    p.add_argument(
        "--prime", type=int, default=0, help="start from the first PRIME frames of a test sequence"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--out", default=None, help="folder for the files (default RUN/samples)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the run's)")

    _compare_parser(sub)

    from grukit import bench

    p = sub.add_parser("bench", help="time the fused kernels against torch.nn.GRU/LSTM")
    bench.add_arguments(p)

    args = parser.parse_args(argv)
    commands = {
        "train": _cmd_train,
        "eval": _cmd_eval,
        "sample": _cmd_sample,
        "compare": _cmd_compare,
        "bench": bench.run,
    }
    try:
        return commands[args.command](args)
    except GrukitError as exc:
        print(f"grukit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"grukit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
