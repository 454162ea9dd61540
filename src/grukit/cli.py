"""The ``grukit`` command: train, eval, sample, predict, forecast, translate, inspect, export,
compare, tune, bench.

Every failure grukit can name (bad data, config, checkpoint, run folder, an offline download,
a full or read-only disk) is printed as one line ``grukit <cmd>: error: ...`` with exit status
2, never a traceback. Every value is checked before any training starts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grukit.errors import ConfigError, GrukitError

__all__ = ["main"]


def _train_parser(sub: Any) -> None:
    from grukit.runconfig import add_run_arguments, packaged_configs

    p = sub.add_parser(
        "train",
        help="train a model (with no flags: a GRU on the Bach chorales shipped with music21)",
        description="Train a model. Settings come from the defaults, the task's defaults, then "
        "--config FILE (TOML, sections [task] [model] [optim] [run]), then the flags below: "
        "--section.key or, where unique, --key (--task, --data, --hidden-size, --horizon, ...).",
    )
    p.add_argument(
        "--config", metavar="FILE",
        help="TOML file of settings, or a packaged config: " + ", ".join(packaged_configs()),
    )  # fmt: skip
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN")
    add_run_arguments(p)


def _cmd_train(args: argparse.Namespace) -> int:
    from grukit.runconfig import overrides_from_namespace
    from grukit.train import Trainer, config_from_args

    overrides = overrides_from_namespace(args)
    if args.resume:
        if args.config:
            raise ConfigError("--resume takes the run's own config; do not pass --config too")
        trainer = Trainer.resume(args.resume, overrides=overrides)
    else:
        trainer = Trainer(config_from_args(args.config, overrides))
    try:
        result = trainer.fit()
    finally:
        trainer.dist.close()
    if not trainer.dist.main:  # under torchrun, rank 0 reports
        return 0
    run = Path(result["run"])
    print(
        f"best epoch {result['best_epoch']} of {result['epochs']} ({result['stopped_by']}); "
        f"{trainer.task.name} on {trainer.task.config.data}, best checkpoint:"
    )
    print(trainer.task.summary(result))
    print(f"run folder: {run}  (config.toml, metrics.jsonl, final.json, checkpoints/)")
    for what, where in result.get("reports", {}).items():
        print(f"{what + ':':11s} {where}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from grukit.train import evaluate, load_run

    config, task, model = load_run(
        args.run, which=args.checkpoint, data=args.data, device=args.device
    )
    splits = ["train", "valid", "test"] if args.split == "all" else [args.split]
    result: dict[str, Any] = {
        "run": str(args.run),
        "checkpoint": args.checkpoint,
        "task": config.task.name,
        "data": config.task.data,
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
        shown = result if len(splits) == 1 else {s: result[s] for s in splits}
        print(task.summary(shown if len(splits) > 1 else {splits[0]: result}))
    return 0


def _positive_int(name: str, value: int, most: int) -> None:
    if not 1 <= value <= most:
        raise ConfigError(f"--{name} must be an integer in [1, {most}], got {value}")


def _out_file(path: str | None, run: Path, default: str) -> Path:
    """Where a command writes: inside the run folder by default, else the user's own path,
    which must not exist yet (grukit never overwrites a file it did not write)."""
    from grukit.io import safe_child

    if path is None:
        return safe_child(run, default)
    out = Path(path)
    if out.exists() or out.is_symlink():
        raise ConfigError(
            f"{out} already exists; choose another --out (grukit never overwrites it)"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist")
    return out


def _cmd_sample(args: argparse.Namespace) -> int:
    from grukit.train import load_run

    if args.length is not None:
        _positive_int("length", args.length, 10_000_000)
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if args.top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, got {args.top_k}")
    _, task, model = load_run(args.run, which=args.checkpoint, device=args.device)
    if hasattr(task, "generate"):  # text: streamed to stdout as it comes
        return _sample_text(task, model, args)
    if not hasattr(task, "write_sample"):
        raise ConfigError(
            f"task {task.name!r} does not sample; `grukit sample` is for music and charlm"
        )
    return _sample_music(task, model, args)


def _sample_text(task: Any, model: Any, args: argparse.Namespace) -> int:
    import time

    from grukit.tasks.charlm.task import stream_to_stdout

    if args.out is not None:
        raise ConfigError("--out is for music samples; a text sample prints to stdout")
    length = 500 if args.length is None else args.length
    start = time.perf_counter()
    prime = args.prime or ""
    if prime:
        task.encode_prime(prime)  # characters outside the vocabulary fail before any output
        stream_to_stdout(prime)
    task.generate(
        model, length, prime=prime, temperature=args.temperature, top_k=args.top_k,
        seed=args.seed, on_text=stream_to_stdout,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print()
    print(f"({length} characters in {seconds:.2f} s, {length / seconds:.0f}/s)", file=sys.stderr)
    return 0


def _sample_music(task: Any, model: Any, args: argparse.Namespace) -> int:
    try:
        prime = int(args.prime) if args.prime is not None else 0
    except ValueError:
        raise ConfigError(
            f"--prime for music is a number of frames of a test sequence, got {args.prime!r}"
        ) from None
    if prime < 0:
        raise ConfigError(f"--prime must be >= 0, got {prime}")
    if args.top_k:
        raise ConfigError("--top-k is for text; music draws each key from its own Bernoulli")
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder for the sample files")
        if out.is_symlink():
            raise ConfigError(f"--out {out} is a symbolic link; give a real folder")
        folder = out
    else:
        from grukit.io import safe_child

        folder = safe_child(Path(args.run), "samples")
    length = 64 if args.length is None else args.length
    midi, png = task.write_sample(
        model, folder, length, temperature=args.temperature, seed=args.seed, prime=prime
    )
    print(f"wrote {midi} and {png}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from grukit.train import load_run

    _, task, model = load_run(args.run, which=args.checkpoint, device=args.device)
    if not hasattr(task, "predict_csv"):
        raise ConfigError(f"task {task.name!r} has no per-case predictions; see `grukit eval`")
    out = _out_file(args.out, Path(args.run), "predictions.csv")
    n = task.predict_csv(model, args.data, out)
    print(f"wrote {n} predictions to {out}")
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from grukit.train import load_run

    _positive_int("horizon", args.horizon, 100_000)
    _, task, model = load_run(args.run, which=args.checkpoint, device=args.device)
    if not hasattr(task, "forecast_csv"):
        raise ConfigError(f"task {task.name!r} does not forecast; `grukit forecast` is for it")
    out = _out_file(args.out, Path(args.run), "forecast.csv")
    n = task.forecast_csv(model, args.data, args.horizon, out)
    print(f"wrote {n} future steps to {out}")
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    """A seq2seq run's decoded output of TEXT (printed) or of each line of --data (a file)."""
    from grukit.train import load_run

    if (args.text is None) == (args.data is None):
        raise ConfigError("give either a TEXT to translate or --data FILE (one of them)")
    if args.out is not None and args.data is None:
        raise ConfigError("--out is for --data FILE; the output of a TEXT is printed")
    if args.beam is not None:
        _positive_int("beam", args.beam, 1000)
    out = _out_file(args.out, Path(args.run), "translations.tsv") if args.data else None
    _, task, model = load_run(args.run, which=args.checkpoint, device=args.device)
    if not hasattr(task, "translate"):
        raise ConfigError(
            f"task {task.name!r} does not translate; `grukit translate` is for seq2seq"
        )
    if out is None:
        print(task.translate(model, [args.text], beam=args.beam)[0])
        return 0
    n = task.translate_file(model, args.data, out, beam=args.beam)
    print(f"wrote {n} translations to {out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Gate heatmaps (PNG) and per-unit statistics (JSON) of one case: grukit.inspect."""
    from grukit.inspect import gate_panels, record, task_case
    from grukit.io import atomic_write_json
    from grukit.plots import plot_gates
    from grukit.train import load_run
    from grukit.variants import VARIANTS

    if args.index < 0:
        raise ConfigError(f"--index must be >= 0, got {args.index}")
    run = Path(args.run)
    config, task, model = load_run(run, which=args.checkpoint, device=args.device)
    if config.model.variant not in VARIANTS:
        raise ConfigError(
            f"the run's variant {config.model.variant!r} is a baseline run by torch's own "
            "module; `grukit inspect` records the gates of the GRU family only"
        )
    stem = f"inspect-{args.split}-{args.index}"
    if args.out is None:
        from grukit.io import safe_child

        safe_child(run, "inspect").mkdir(exist_ok=True)
        png, js = (_out_file(None, run, f"inspect/{stem}.{ext}") for ext in ("png", "json"))
    else:
        folder = Path(args.out)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ConfigError(f"--out {folder} is not a folder; give a folder for the files")
        if not folder.exists():
            if not folder.parent.is_dir():
                raise ConfigError(f"--out {folder}: the folder {folder.parent} does not exist")
            folder.mkdir()
        png, js = (_out_file(str(folder / f"{stem}.{ext}"), run, "") for ext in ("png", "json"))
    case = task_case(task, model, args.split, args.index)
    rec = record(model.rnn, case.rnn_input)
    stats = {"run": str(run), "checkpoint": args.checkpoint, "task": config.task.name,
             "data": config.task.data, "split": args.split, "index": args.index,
             "case": case.label, **rec.statistics()}  # fmt: skip
    title = f"{config.model.variant}, {case.label}; units sorted by kept share (top: keeps most)"
    plot_gates(png, gate_panels(rec), view_kind=case.view_kind, view=case.view, title=title)
    atomic_write_json(js, stats)
    if args.json:
        print(json.dumps(stats))
    print(f"wrote {png} and {js}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """The run's model as an ONNX file (grukit.export); never overwrites a file."""
    from grukit.export import describe_io, to_onnx
    from grukit.train import load_run

    out = Path(args.onnx)
    if out.exists() or out.is_symlink():
        raise ConfigError(
            f"{out} already exists; choose another --onnx (grukit never overwrites it)"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"--onnx {out}: the folder {out.parent} does not exist")
    config, _, model = load_run(args.run, which=args.checkpoint, device="cpu")
    options: dict[str, Any] = {} if args.opset is None else {"opset": args.opset}
    if args.lengths:
        options["lengths"] = True
    exported = to_onnx(model, out, initial_state=args.state, **options)
    print(
        f"wrote {out}: {config.task.name} model, variant {config.model.variant}, "
        f"opset {exported.opset_import[0].version}"
    )
    for line in describe_io(exported):
        print(f"  {line}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from grukit.compare import compare, format_table, parse_models
    from grukit.runconfig import overrides_from_namespace

    overrides = overrides_from_namespace(args)
    try:
        lrs = [float(v) for v in args.lrs.split(",") if v.strip()] if args.lrs else None
    except ValueError:
        raise ConfigError(f"--lrs takes comma-separated numbers, got {args.lrs!r}") from None
    _positive_int("seeds", args.seeds, 1000)
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    report = compare(
        config=args.config,
        overrides=overrides,
        models=parse_models(args.variants) if args.variants else None,
        lrs=lrs,
        only=[v.strip() for v in args.only.split(",") if v.strip()] or None,
        seeds=args.seeds,
        out=args.out,
        log=log,
    )
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _compare_parser(sub: Any) -> None:
    from grukit.runconfig import add_run_arguments

    p = sub.add_parser(
        "compare",
        help="train several variants at a matched parameter count, seeds, side by side",
        description="Train each variant (sized to the first one's parameter count unless "
        "given as VARIANT:UNITS) with one set of settings, over --seeds seeds; print mean and "
        "std of the task's watched metric. With --task music (the default) and no --variants "
        "this is Chung et al. 2014: tanh-RNN 100, LSTM 36, GRU 46 under their protocol "
        "(packaged config chung2014), beside the paper's Table 2.",
    )
    p.add_argument("--config", metavar="FILE", default=None,
                   help="TOML file (or packaged config) of shared settings (music default: "
                   "chung2014)")  # fmt: skip
    p.add_argument(
        "--variants", default="",
        help="comma-separated VARIANT or VARIANT:UNITS (default: the task's own list)",
    )  # fmt: skip
    p.add_argument(
        "--only", default="", metavar="VARIANTS",
        help="train only these variants of the comparison (sized as in the whole one), to "
        "split one comparison over processes",
    )  # fmt: skip
    p.add_argument(
        "--lrs", default=None,
        help="learning rates to try per model; the best on validation is kept "
        "(default: the task's list; '' = --lr)",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, default=1, help="seeds per model (mean +- std)")
    p.add_argument("--json", action="store_true", help="print one JSON object (logs go to stderr)")
    p.add_argument("--out", default="runs/compare", help="folder for the runs")
    add_run_arguments(p, exclude=("model.variant", "model.hidden_size", "run.out", "run.seed"))


def _cmd_tune(args: argparse.Namespace) -> int:
    from grukit.runconfig import overrides_from_namespace
    from grukit.tune import format_table, tune

    _positive_int("trials", args.trials, 1_000_000)
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    report = tune(
        space=args.space,
        trials=args.trials,
        config=args.config,
        overrides=overrides_from_namespace(args),
        out=args.out,
        storage=args.storage,
        study=args.study,
        seed=args.seed,
        pruner=args.pruner,
        pruner_startup_trials=args.pruner_startup_trials,
        pruner_warmup_epochs=args.pruner_warmup_epochs,
        sampler=args.sampler,
        log=log,
    )
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    else:
        print(format_table(report))
        print(f"table: {report['table']}  plot: {report['plot']}")
    return 0


def _tune_parser(sub: Any) -> None:
    from grukit.runconfig import add_run_arguments

    p = sub.add_parser(
        "tune",
        help="search hyperparameters with Optuna (TPE, pruning); writes the best config",
        description="Search any config key with Optuna's TPE sampler: --space maps keys "
        "(section.key, as in a run's config.toml) to { low, high[, step | log] } or "
        "{ choices }; every trial trains the base config (--config, then the flags) in "
        "--out/trial-NNNN and reports the task's watched metric each epoch, so that --pruner "
        "stops bad trials early. Writes trials.csv, history.png and best.toml (run it with "
        "grukit train --config). Needs optuna: pip install 'grukit[tune]'.",
    )
    p.add_argument("--space", required=True, metavar="SPACE",
                   help="TOML file of the search space, or a packaged space (jsb)")  # fmt: skip
    p.add_argument("--trials", type=int, default=20, help="trials this process runs")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="TOML file (or packaged config) the space is applied over")  # fmt: skip
    p.add_argument(
        "--storage", default=None, metavar="URL",
        help="Optuna RDB storage: sqlite:///study.db (one machine) or a PostgreSQL/MySQL URL "
        "(several processes or machines); the study resumes from it (default: in memory)",
    )  # fmt: skip
    p.add_argument("--study", default=None, metavar="NAME",
                   help="the study's name in --storage (default: --out's folder name)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the TPE sampler (give each worker its own)")  # fmt: skip
    p.add_argument(
        "--run.seed", dest="run.seed", type=int, default=argparse.SUPPRESS, metavar="INT",
        help="seed of every trial's run (default: the config's)",
    )  # fmt: skip
    p.add_argument(
        "--sampler", default="tpe", choices=["tpe", "grid"],
        help="tpe (default), or grid: every combination of the space's choices once",
    )  # fmt: skip
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                   help="stop bad trials early (default median)")  # fmt: skip
    p.add_argument(
        "--pruner-startup-trials", type=int, default=5, metavar="N",
        help="median: trials that complete before any is pruned (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--pruner-warmup-epochs", type=int, default=0, metavar="N",
        help="epochs a trial always runs before it may be pruned (default 0)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object (logs go to stderr)")
    p.add_argument("--out", default="runs/tune", metavar="DIR",
                   help="the study folder: a run folder per trial, the table, plot and best "
                   "config (new, empty or this study's)")  # fmt: skip
    add_run_arguments(p, exclude=("run.out", "run.seed"))


def _run_command_parsers(sub: Any) -> None:
    def run_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", metavar="RUN", help="run folder")
        p.add_argument("--checkpoint", default="best", choices=["best", "last"])
        p.add_argument(
            "--device", default=None, help="cpu, cuda, cuda:N or auto (default: the run's)"
        )

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on a split")
    run_args(p)
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--data", default=None, help="evaluate on this data set instead of the run's")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser(
        "sample",
        help="generate from a trained model: music (MIDI + PNG) or text (printed as it comes)",
    )
    run_args(p)
    p.add_argument(
        "--length", type=int, default=None,
        help="frames (music, default 64) or characters (charlm, default 500) to generate",
    )  # fmt: skip
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits (> 0)")
    p.add_argument(
        "--prime", default=None,
        help="text to continue (charlm); music: start from the first PRIME frames of a test "
        "sequence",
    )  # fmt: skip
    p.add_argument(
        "--top-k", type=int, default=0, help="text: draw from the K most likely only (0: all)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="music: folder for the files (default RUN/samples)")

    p = sub.add_parser("predict", help="classify every case of a data file (CSV of classes)")
    run_args(p)
    p.add_argument("--data", required=True, help="a .ts file or folder, or an .npz file")
    p.add_argument("--out", default=None, help="CSV file (default RUN/predictions.csv)")

    p = sub.add_parser("forecast", help="forecast the future of a series (CSV)")
    run_args(p)
    p.add_argument("--data", required=True, help="CSV file (or named series) to continue")
    p.add_argument("--horizon", type=int, required=True, help="steps to forecast")
    p.add_argument("--out", default=None, help="CSV file (default RUN/forecast.csv)")

    p = sub.add_parser(
        "translate", help="decode a source text, or each line of a file, with a seq2seq run"
    )
    run_args(p)
    p.add_argument("text", nargs="?", default=None, metavar="TEXT", help="the source to decode")
    p.add_argument(
        "--data", default=None, metavar="FILE",
        help="decode each line of FILE (a TSV file's source column, or plain lines)",
    )  # fmt: skip
    p.add_argument(
        "--out", default=None, help="TSV of source<TAB>output (default RUN/translations.tsv)"
    )
    p.add_argument(
        "--beam", type=int, default=None,
        help="beam width (default: the run's task.beam_width; 1 is the greedy decode)",
    )  # fmt: skip

    p = sub.add_parser(
        "inspect", help="gate heatmaps (PNG) and per-unit gate statistics (JSON) of one case"
    )
    run_args(p)
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--index", type=int, default=0, help="the case of the split (from 0)")
    p.add_argument(
        "--out", default=None, metavar="DIR",
        help="folder for inspect-SPLIT-INDEX.png/.json (default RUN/inspect; files in DIR must "
        "not exist yet)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="also print the statistics as JSON")

    p = sub.add_parser("export", help="write a run's model as an ONNX file (for onnxruntime)")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument(
        "--onnx", required=True, metavar="FILE", help="the file to write (must not exist)"
    )
    p.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default 17; layer norm needs 17+)"
    )
    p.add_argument(
        "--lengths", action="store_true", help="add an int64 lengths (N,) input (variable lengths)"
    )
    p.add_argument(
        "--state", action="store_true",
        help="add an initial-state input h0 (and c0), e.g. to carry the state when streaming",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grukit", description="Train, evaluate, compare and benchmark GRU networks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    _run_command_parsers(sub)
    _compare_parser(sub)
    _tune_parser(sub)

    from grukit import bench

    p = sub.add_parser("bench", help="time the fused kernels against torch.nn.GRU/LSTM")
    bench.add_arguments(p)

    args = parser.parse_args(argv)
    commands = {
        "train": _cmd_train,
        "eval": _cmd_eval,
        "sample": _cmd_sample,
        "predict": _cmd_predict,
        "forecast": _cmd_forecast,
        "translate": _cmd_translate,
        "export": _cmd_export,
        "inspect": _cmd_inspect,
        "compare": _cmd_compare,
        "tune": _cmd_tune,
        "bench": bench.run,
    }
    try:
        return commands[args.command](args)
    except GrukitError as exc:
        print(f"grukit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder, a file where a folder should be
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"grukit {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"grukit {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"grukit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
