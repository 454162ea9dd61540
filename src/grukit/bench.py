"""Speed of grukit's fused kernels against torch.nn.GRU, torch.nn.LSTM and the GEMM-only floor.

Every candidate runs in the same process, interleaved: each round times every candidate once
in turn, so a change in machine load touches them all alike; the report gives the median over
rounds. Two measurements per shape: the forward pass without grad, and a training step
(forward + backward of ``output.sum()``). The floor runs the same matrix products as a ``gru``
layer through ``at::mm`` and nothing else.

Run ``grukit bench`` (or ``python -m grukit.bench``); ``--json FILE`` writes every timing.
``grukit bench --options`` times the in-cell options instead (:mod:`grukit.cell_options`): the
fused training step with each option against the plain fused step, and against the reference
path with the same option, at S2 and S4.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

import grukit
from grukit import fused

__all__ = ["SHAPES", "Shape", "run_benchmark", "main"]


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    steps: int
    input: int
    hidden: int

    def __str__(self) -> str:
        return f"{self.name} (N={self.batch}, T={self.steps}, I={self.input}, H={self.hidden})"


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("S1", 1, 500, 32, 64),
        Shape("S2", 16, 200, 88, 46),
        Shape("S3", 64, 48, 8, 64),
        Shape("S4", 32, 100, 88, 256),
        Shape("S5", 256, 50, 128, 256),
    )
}
#: minGRU's parallel scan against its sequential loop, at 1000 steps.
SCAN_SHAPE = Shape("M1", 16, 1000, 64, 64)


@dataclass
class Candidate:
    name: str
    forward: Callable[[], object]
    train: Callable[[], object]
    times: dict[str, list[float]] = field(default_factory=lambda: {"forward": [], "train": []})
    #: untimed calls first: the fused kernels learn per kind of call whether a second thread
    #: pays (grukit.fused.set_thread_policy), which takes a few calls
    warmup: int = 1


#: warm-up calls of a fused candidate: enough for the thread choice to settle (more after a
#: change of load, where what was learnt on the quiet machine is stale)
FUSED_WARMUP = 8
CONTEND_WARMUP = 24


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's thread count set to ``n`` (None: left as it is) while the block runs."""
    if n is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _module_candidate(
    name: str, module: nn.Module, x: torch.Tensor, module_threads: int | None = None, **call: object
) -> Candidate:
    """``module`` on ``x``: forward without grad, and a training step (the loss ``out.sum()``
    and its backward). ``module_threads``: torch's thread count for the module's own calls
    (forward and backward) only, the loss keeping the process's."""
    params = list(module.parameters())
    fused_module = getattr(module, "backend", None) in ("fused", "auto")

    def forward() -> object:
        with torch.no_grad(), _torch_threads(module_threads):
            return module(x, **call)

    def train() -> object:
        for p in params:
            p.grad = None
        with _torch_threads(module_threads):
            out, _ = module(x, **call)
        loss = out.sum()
        with _torch_threads(module_threads):
            loss.backward()
        return out

    return Candidate(name, forward, train, warmup=FUSED_WARMUP if fused_module else 1)


def _floor_candidate(shape: Shape, generator: torch.Generator) -> Candidate:
    N, T, I, H = shape.batch, shape.steps, shape.input, shape.hidden

    def rand(*size: int) -> torch.Tensor:
        return torch.rand(*size, generator=generator) - 0.5

    x, h = rand(T * N, I), rand(N, H)
    w_ih, w_hh, hs, dA = rand(3 * H, I), rand(3 * H, H), rand(T * N, H), rand(T * N, 3 * H)
    return Candidate(
        "GEMM floor",
        lambda: fused.gemm_floor(x, h, w_ih, w_hh, hs, dA, False),
        lambda: fused.gemm_floor(x, h, w_ih, w_hh, hs, dA, True),
    )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _measure(
    candidates: Sequence[Candidate],
    rounds: int,
    budget_s: float,
    hook: Callable[[], object] | None = None,
) -> None:
    """Interleaved rounds: every candidate once per round, in turn, after its warm-up calls.
    ``hook`` (untimed) runs before every timed call."""
    for c in candidates:
        for _ in range(c.warmup):
            c.forward()
            c.train()
    started = time.perf_counter()
    for r in range(rounds):
        for c in candidates:
            for mode, fn in (("forward", c.forward), ("train", c.train)):
                if hook is not None:
                    hook()
                c.times[mode].append(_timed(fn))
        if r >= 2 and time.perf_counter() - started > budget_s:
            break


def _shape_candidates(shape: Shape, variants: Sequence[str], seed: int) -> list[Candidate]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape.steps, shape.batch, shape.input, generator=g) - 0.5
    I, H = shape.input, shape.hidden
    cands = [
        _module_candidate("torch.nn.GRU", nn.GRU(I, H), x),
        _module_candidate("torch.nn.LSTM", nn.LSTM(I, H), x),
        _module_candidate("reference gru", grukit.GRU(I, H, backend="reference"), x),
    ]
    for v in variants:
        cands.append(
            _module_candidate(f"fused {v}", grukit.GRU(I, H, variant=v, backend="fused"), x)
        )
    cands.append(_floor_candidate(shape, g))
    return cands


def run_benchmark(
    shapes: Sequence[Shape],
    variants: Sequence[str] = tuple(grukit.VARIANTS),
    *,
    rounds: int = 15,
    budget_s: float = 20.0,
    seed: int = 0,
    scan: bool = True,
    log: Callable[[str], object] = print,
) -> dict:
    """Time every candidate on every shape; return a JSON-ready dict of medians and ratios."""
    if not fused.available():
        raise RuntimeError(f"the fused kernels are unavailable: {fused.unavailable_reason()}")
    report: dict = {"machine": _machine(), "shapes": {}}
    report["machine"]["peak_sgemm_gflops"] = peak_sgemm_gflops()
    for shape in shapes:
        log(f"timing {shape} ...")
        cands = _shape_candidates(shape, variants, seed)
        _measure(cands, rounds, budget_s)
        med = {c.name: {k: statistics.median(v) for k, v in c.times.items()} for c in cands}
        entry: dict = {
            "shape": vars(shape),
            "rounds": len(cands[0].times["train"]),
            "median_s": med,
        }
        ratios: dict = {}
        for c in cands:
            r = {}
            for mode in ("forward", "train"):
                t = med[c.name][mode]
                r[mode] = {
                    "vs_torch_gru": t / med["torch.nn.GRU"][mode],
                    "vs_torch_lstm": t / med["torch.nn.LSTM"][mode],
                    "floor_fraction": med["GEMM floor"][mode] / t,
                }
            ratios[c.name] = r
        entry["ratios"] = ratios
        entry["fused_gru_share_of_peak"] = {
            mode: gru_layer_flops(shape, mode == "train") / med["fused gru"][mode] / 1e9
            / report["machine"]["peak_sgemm_gflops"]
            for mode in ("forward", "train")
        } if "fused gru" in med else {}  # fmt: skip
        report["shapes"][shape.name] = entry
    if scan:
        report["mingru_scan"] = _scan_benchmark(SCAN_SHAPE, rounds, budget_s, seed, log)
    return report


def _scan_benchmark(shape: Shape, rounds: int, budget_s: float, seed: int, log: Callable) -> dict:
    log(f"timing minGRU at {shape} ...")
    torch.manual_seed(seed)
    x = torch.rand(shape.steps, shape.batch, shape.input) - 0.5
    base = grukit.GRU(shape.input, shape.hidden, variant="mingru", backend="reference")
    cands = []
    for backend in ("reference", "scan", "fused"):
        m = grukit.GRU(shape.input, shape.hidden, variant="mingru", backend=backend)
        m.load_state_dict(base.state_dict())
        cands.append(_module_candidate(f"mingru {backend}", m, x))
    _measure(cands, rounds, budget_s)
    med = {c.name: {k: statistics.median(v) for k, v in c.times.items()} for c in cands}
    seq = med["mingru reference"]
    return {
        "shape": vars(shape),
        "median_s": med,
        "speedup_vs_sequential": {
            c.name: {m: seq[m] / med[c.name][m] for m in ("forward", "train")} for c in cands
        },
    }


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` that returns once the device has finished its work (CUDA runs asynchronously)."""
    if device.type != "cuda":
        return fn

    def call() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def run_device_benchmark(
    device: str,
    shapes: Sequence[Shape],
    variants: Sequence[str] = ("gru", "mgu"),
    *,
    rounds: int = 15,
    budget_s: float = 20.0,
    seed: int = 0,
    log: Callable[[str], object] = print,
) -> dict:
    """``grukit bench --device cuda``: on ``device``, torch.nn.GRU (cuDNN on CUDA) and
    torch.nn.LSTM beside grukit's ``auto`` choice (cuDNN through torch's GRU for ``gru``), its
    reference loop and its compiled step (:mod:`grukit.compiled`) for each of ``variants``;
    float32, interleaved rounds, medians and ratios to torch.nn.GRU."""
    dev = torch.device(device)
    fused.available()  # _machine asks the kernels which GEMM they call
    report: dict = {"machine": _machine(), "device": str(dev), "shapes": {}}
    if dev.type == "cuda":
        report["device_name"] = torch.cuda.get_device_name(dev)
        report["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    for shape in shapes:
        log(f"timing {shape} on {dev} ...")
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        x = (torch.rand(shape.steps, shape.batch, shape.input, generator=g) - 0.5).to(dev)
        I, H = shape.input, shape.hidden
        modules: dict[str, nn.Module] = {
            "torch.nn.GRU": nn.GRU(I, H),
            "torch.nn.LSTM": nn.LSTM(I, H),
        }
        for v in variants:
            for backend in ("auto", "reference", "compiled"):
                if backend == "auto" and v != "gru":
                    continue  # auto is the reference loop for them on CUDA
                modules[f"{backend} {v}"] = grukit.GRU(I, H, variant=v, backend=backend)
        cands = []
        for name, module in modules.items():
            c = _module_candidate(name, module.to(dev), x)
            c.forward, c.train = _synced(c.forward, dev), _synced(c.train, dev)
            c.warmup = 3  # the compiled step compiles on its first calls
            cands.append(c)
        _measure(cands, rounds, budget_s)
        med = {c.name: {k: statistics.median(v) for k, v in c.times.items()} for c in cands}
        report["shapes"][shape.name] = {
            "shape": vars(shape),
            "rounds": len(cands[0].times["train"]),
            "median_s": med,
            "vs_torch_gru": {
                n: {m: med[n][m] / med["torch.nn.GRU"][m] for m in ("forward", "train")}
                for n in med
            },
        }
    return report


def format_device_report(report: dict) -> str:
    lines = [f"device {report['device']} {report.get('device_name', '')}".rstrip()]
    lines.append(_machine_line(report["machine"]))
    for name, entry in report["shapes"].items():
        lines.append(f"\n{name} {entry['shape']}: ms (x torch.nn.GRU), forward | train step")
        for cand, med in entry["median_s"].items():
            r = entry["vs_torch_gru"][cand]
            lines.append(
                f"  {cand:22s} {1e3 * med['forward']:9.3f} ({r['forward']:5.2f}x) | "
                f"{1e3 * med['train']:9.3f} ({r['train']:5.2f}x)"
            )
    return "\n".join(lines)


#: The in-cell option settings ``--options`` times (training mode: masks drawn every call).
#: ``MASKS_GIVEN`` are timed once more with masks drawn once and passed in (``masks=``), which
#: separates the kernel's cost from that of drawing the masks.
OPTION_SETTINGS: dict[str, dict] = {
    "plain": {},
    "recurrent_dropout 0.25": {"recurrent_dropout": 0.25},
    "candidate_dropout 0.25": {"candidate_dropout": 0.25},
    "zoneout 0.1": {"zoneout": 0.1},
    "recurrent_dropout + zoneout": {"recurrent_dropout": 0.25, "zoneout": 0.1},
    "weight_drop 0.25": {"weight_drop": 0.25},
    "layer_norm": {"layer_norm": True},
    "all five": {
        "recurrent_dropout": 0.25, "candidate_dropout": 0.25, "zoneout": 0.1,
        "layer_norm": True, "weight_drop": 0.25,
    },
}  # fmt: skip
MASKS_GIVEN = ("candidate_dropout 0.25", "zoneout 0.1")


def run_options_benchmark(
    shapes: Sequence[Shape],
    *,
    reference_shapes: Sequence[str] = ("S2",),
    rounds: int = 15,
    budget_s: float = 30.0,
    seed: int = 0,
    log: Callable[[str], object] = print,
) -> dict:
    """The fused ``gru`` training step with each in-cell option, as a ratio to the plain fused
    step, and (on ``reference_shapes``) the reference path's time with the same option over it."""
    if not fused.available():
        raise RuntimeError(f"the fused kernels are unavailable: {fused.unavailable_reason()}")
    report: dict = {"machine": _machine(), "shapes": {}}
    for shape in shapes:
        log(f"timing the in-cell options at {shape} ...")
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(shape.steps, shape.batch, shape.input, generator=g) - 0.5
        backends = ["fused"] + (["reference"] if shape.name in reference_shapes else [])
        cands = []
        for backend in backends:
            for label, options in OPTION_SETTINGS.items():
                m = grukit.GRU(shape.input, shape.hidden, backend=backend, **options)
                cands.append(_module_candidate(f"{backend} {label}", m, x))
                if backend == "fused" and label in MASKS_GIVEN:
                    masks = m.draw_masks(x, torch.Generator().manual_seed(seed))
                    cands.append(
                        _module_candidate(f"fused {label}, masks given", m, x, masks=masks)
                    )
        # the fused candidates in rounds of their own: after a reference call (tens of ms of
        # Python), whichever fused candidate came next found cold caches and idle threads,
        # and that was always the plain one, the denominator of every ratio
        for group in ("fused", "reference"):
            _measure([c for c in cands if c.name.startswith(group)], rounds, budget_s)
        med = {c.name: statistics.median(c.times["train"]) for c in cands}
        plain = med["fused plain"]
        labels = [*OPTION_SETTINGS, *(f"{k}, masks given" for k in MASKS_GIVEN)]
        entry: dict = {
            "shape": vars(shape),
            "rounds": len(cands[0].times["train"]),
            "median_train_s": med,
            "vs_plain_fused": {k: med[f"fused {k}"] / plain for k in labels},
        }
        if "reference" in backends:
            entry["reference_over_fused"] = {
                k: med[f"reference {k}"] / med[f"fused {k}"] for k in OPTION_SETTINGS
            }
        report["shapes"][shape.name] = entry
    return report


def format_options_report(report: dict) -> str:
    shapes = list(report["shapes"])
    lines = [
        _machine_line(report["machine"]),
        "",
        "### in-cell options: fused training step as a ratio to the plain fused step"
        " (and the reference path's time over the fused one)",
        "",
        "| option | " + " | ".join(shapes) + " |",
        "|---|" + "---|" * len(shapes),
    ]
    for label in report["shapes"][shapes[0]]["vs_plain_fused"]:
        cells = []
        for s in shapes:
            e = report["shapes"][s]
            cell = f"{e['vs_plain_fused'][label]:.2f}x"
            if label in e.get("reference_over_fused", {}):
                cell += f" (reference {e['reference_over_fused'][label]:.1f}x slower)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    plain = [f"{report['shapes'][s]['median_train_s']['fused plain'] * 1e3:.1f}" for s in shapes]
    lines.append("| (plain fused step, ms) | " + " | ".join(plain) + " |")
    lines.append("")
    return "\n".join(lines)


#: What ``--contend`` times: the fused ``gru`` (at the thread count the process has; with the
#: whole step at one thread; with only the kernel calls at one thread, the loss keeping torch's
#: threads: the speed the kernels must not fall below) beside torch.nn.LSTM.
CONTEND_NAMES = (
    "fused gru",
    "fused gru, 1 thread",
    "fused gru, kernel on 1 thread",
    "torch.nn.LSTM",
)


def _one_thread(c: Candidate) -> Candidate:
    def pinned(fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with _torch_threads(1):
                return fn()

        return call

    return Candidate(f"{c.name}, 1 thread", pinned(c.forward), pinned(c.train), warmup=c.warmup)


class _BusyProcesses:
    """``n`` processes that each keep one core busy (a Python loop) while the block runs."""

    def __init__(self, n: int) -> None:
        self.n, self.procs = n, []

    def __enter__(self) -> _BusyProcesses:
        import subprocess
        import sys

        code = "while True: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        time.sleep(0.3)  # let them start spinning
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def _onnxruntime_load() -> Callable[[], object]:
    """A call that runs onnxruntime (its own intra-op thread pool, default settings) on a small
    MatMul graph: what a process that serves an ONNX model between training steps does."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError as e:
        raise RuntimeError(f"--contend-onnxruntime needs onnx and onnxruntime: {e}") from None
    w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "load",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((64, 256), dtype=np.float32)
    return lambda: session.run(None, {"x": x})


def _loaded_medians(
    cands: list[Candidate], rounds: int, budget_s: float, hook: Callable[[], object] | None
) -> dict:
    """Fresh timings of ``cands`` (the fused ones warmed up longer: the thread choice learnt
    under another load is stale); medians per candidate and mode."""
    for c in cands:
        c.times = {"forward": [], "train": []}
        c.warmup = CONTEND_WARMUP if c.warmup > 1 else 1
    _measure(cands, rounds, budget_s, hook=hook)
    return {c.name: {k: statistics.median(v) for k, v in c.times.items()} for c in cands}


def run_contention_benchmark(
    shapes: Sequence[Shape],
    *,
    busy: int = 1,
    onnxruntime: bool = False,
    rounds: int = 15,
    budget_s: float = 20.0,
    seed: int = 0,
    log: Callable[[str], object] = print,
) -> dict:
    """Each shape timed on the quiet machine, then beside ``busy`` processes that each keep a
    core busy (and, with ``onnxruntime``, with onnxruntime run in this process before every
    timed call); the report gives both medians and the slowdown of each candidate."""
    if not fused.available():
        raise RuntimeError(f"the fused kernels are unavailable: {fused.unavailable_reason()}")
    between = _onnxruntime_load() if onnxruntime else None
    loads = {f"beside {busy} busy process{'es' if busy != 1 else ''}": (busy, None)}
    if between is not None:
        loads["onnxruntime in the process"] = (0, between)
    report: dict = {"machine": _machine(), "loads": list(loads), "shapes": {}}
    for shape in shapes:
        log(f"timing {shape} on the quiet machine and under load ...")
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(shape.steps, shape.batch, shape.input, generator=g) - 0.5
        gru = grukit.GRU(shape.input, shape.hidden)
        fused_gru = _module_candidate("fused gru", gru, x)
        kernel_one = _module_candidate("fused gru, kernel on 1 thread", gru, x, module_threads=1)
        lstm = _module_candidate("torch.nn.LSTM", nn.LSTM(shape.input, shape.hidden), x)

        cands = [fused_gru, _one_thread(fused_gru), kernel_one, lstm]
        quiet = _loaded_medians(cands, rounds, budget_s, None)
        entry: dict = {"shape": vars(shape), "quiet_s": quiet, "loaded_s": {}}
        for label, (n, hook) in loads.items():
            with _BusyProcesses(n):
                entry["loaded_s"][label] = _loaded_medians(cands, rounds, budget_s, hook)
        entry["slowdown"] = {
            label: {
                name: {m: t[name][m] / entry["quiet_s"][name][m] for m in ("forward", "train")}
                for name in CONTEND_NAMES
            }
            for label, t in entry["loaded_s"].items()
        }
        report["shapes"][shape.name] = entry
    return report


def format_contention_report(report: dict) -> str:
    shapes = list(report["shapes"])
    m = report["machine"]
    lines = [_machine_line(m), ""]
    for label in report["loads"]:
        for mode, title in (("train", "training step"), ("forward", "forward without grad")):
            lines += [
                f"### {title} {label}: loaded / quiet time (quiet ms in brackets)",
                "",
                "| candidate | " + " | ".join(shapes) + " |",
                "|---|" + "---|" * len(shapes),
            ]
            for name in CONTEND_NAMES:
                cells = [
                    f"{report['shapes'][s]['slowdown'][label][name][mode]:.2f}x "
                    f"({report['shapes'][s]['quiet_s'][name][mode] * 1e3:.2f})"
                    for s in shapes
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


#: ``--step``: one step at batch 1, input 88, for each hidden size.
STEP_HIDDEN = (64, 256, 1024)
STEP_INPUT = 88


def _onnxruntime_gru_step(cell: nn.GRUCell) -> Callable[[torch.Tensor, torch.Tensor], object]:
    """onnxruntime's GRU operator (one step; the model of :func:`grukit.peers.onnx_gru_model`)
    on ``cell``'s weights: a call ``(x (1, I), h (1, H)) -> h'``."""
    import onnxruntime as ort

    from grukit.peers import onnx_gru_model

    weights = {k: v.detach().numpy() for k, v in cell.state_dict().items()}
    model = onnx_gru_model(weights, steps=1, batch=1)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def step(x: torch.Tensor, h: torch.Tensor) -> object:
        return session.run(["hn"], {"x": x.numpy()[None], "h0": h.numpy()[None]})[0][0]

    return step


def run_step_benchmark(
    hiddens: Sequence[int] = STEP_HIDDEN,
    *,
    rounds: int = 15,
    calls: int = 200,
    seed: int = 0,
    variants: Sequence[str] = (),
    log: Callable[[str], object] = print,
) -> dict:
    """Microseconds per step at batch 1 (no grad) of grukit's GRUCell and GRU.step beside
    torch.nn.GRUCell and (when installed) onnxruntime's GRU operator; interleaved rounds of
    ``calls`` steps each (onnxruntime's after the others'), median over rounds; outputs checked
    equal first. ``variants``: also each of these variants' GRUCell beside torch.nn.GRUCell."""
    if not fused.available():
        raise RuntimeError(f"the fused kernels are unavailable: {fused.unavailable_reason()}")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        with_ort = True
    except ImportError:
        with_ort = False
    report: dict = {"machine": _machine(), "input": STEP_INPUT, "hidden": {}}
    for H in hiddens:
        log(f"timing one step at batch 1, input {STEP_INPUT}, hidden {H} ...")
        torch.manual_seed(seed)
        ref = nn.GRUCell(STEP_INPUT, H)
        cell = grukit.GRUCell(STEP_INPUT, H)
        cell.load_state_dict(ref.state_dict())
        net = grukit.GRU(STEP_INPUT, H)
        net.load_state_dict({k + "_l0": v for k, v in ref.state_dict().items()})
        x, h = torch.randn(1, STEP_INPUT), torch.randn(1, H)
        h3 = h[None]
        calls_of: dict[str, Callable[[], object]] = {
            "grukit GRUCell": functools.partial(cell, x, h),
            "grukit GRU.step": functools.partial(net.step, x, h3),
            "torch.nn.GRUCell": functools.partial(ref, x, h),
        }
        with torch.no_grad():
            want = ref(x, h)
            for got in (cell(x, h), net.step(x, h3)[0]):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            if with_ort:
                ort_step = _onnxruntime_gru_step(ref)
                got = torch.from_numpy(ort_step(x, h))
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
                calls_of["onnxruntime GRU"] = functools.partial(ort_step, x, h)
            # onnxruntime's idle workers spin after every run and would slow whatever runs
            # next in this process: its rounds come after the others' (interleaved) rounds
            times: dict[str, list[float]] = {k: [] for k in calls_of}
            groups = [[k for k in calls_of if k != "onnxruntime GRU"]]
            if with_ort:
                groups.append(["onnxruntime GRU"])
            for group in groups:
                for r in range(rounds + 1):
                    for name in group:
                        fn = calls_of[name]
                        start = time.perf_counter()
                        for _ in range(calls):
                            fn()
                        if r:  # the first round warms up
                            times[name].append((time.perf_counter() - start) / calls)
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        report["hidden"][str(H)] = {"median_us": med}
        if variants:
            report["hidden"][str(H)]["variants_us"] = _time_variant_cells(
                H, variants, ref, x, h, rounds=rounds, calls=calls
            )
    return report


def _time_variant_cells(
    H: int,
    variants: Sequence[str],
    ref: nn.GRUCell,
    x: torch.Tensor,
    h: torch.Tensor,
    *,
    rounds: int,
    calls: int,
) -> dict[str, dict[str, float]]:
    """Each variant's grukit GRUCell step (batch 1, no grad), interleaved with torch.nn.GRUCell
    on the same input: ``{variant: {"grukit": us, "torch.nn.GRUCell": us}}``."""
    out = {}
    with torch.no_grad():
        for variant in variants:
            torch.manual_seed(0)
            cell = grukit.GRUCell(STEP_INPUT, H, variant=variant)
            times: dict[str, list[float]] = {"grukit": [], "torch.nn.GRUCell": []}
            fns = {"grukit": functools.partial(cell, x, h),
                   "torch.nn.GRUCell": functools.partial(ref, x, h)}  # fmt: skip
            for r in range(rounds + 1):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    if r:
                        times[name].append((time.perf_counter() - start) / calls)
            out[variant] = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return out


def format_step_report(report: dict) -> str:
    hs = list(report["hidden"])
    m = report["machine"]
    names = list(report["hidden"][hs[0]]["median_us"])

    def table(title: str, head: str, rows: dict[str, dict[str, tuple[float, float]]]) -> list:
        """A markdown table: one row per name, ``us (us / torch's us)`` per hidden size."""
        out = [title, "", f"| {head} | " + " | ".join(f"H={h}" for h in hs) + " |",
               "|---|" + "---:|" * len(hs)]  # fmt: skip
        for name, by_h in rows.items():
            cells = [f"{by_h[h][0]:.1f} ({by_h[h][0] / by_h[h][1]:.2f})" for h in hs]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        return [*out, ""]

    def med(h: str) -> dict[str, float]:
        return report["hidden"][h]["median_us"]

    lines = [_machine_line(m), ""]
    lines += table(
        f"### one step at batch 1, input {report['input']}: microseconds (ratio to "
        "torch.nn.GRUCell)", "candidate",
        {n: {h: (med(h)[n], med(h)["torch.nn.GRUCell"]) for h in hs} for n in names},
    )  # fmt: skip
    variants = list(report["hidden"][hs[0]].get("variants_us", {}))
    if variants:

        def var(h: str, v: str) -> tuple[float, float]:
            t = report["hidden"][h]["variants_us"][v]
            return t["grukit"], t["torch.nn.GRUCell"]

        lines += table(
            "### every variant's GRUCell, one step at batch 1: microseconds (ratio to "
            "torch.nn.GRUCell timed beside it)", "variant",
            {v: {h: var(h, v) for h in hs} for v in variants},
        )  # fmt: skip
    return "\n".join(lines)


def run_peers_benchmark(
    shapes: Sequence[Shape],
    peers: Sequence[str] | None = None,
    *,
    rounds: int = 15,
    budget_s: float = 20.0,
    seed: int = 0,
    log: Callable[[str], object] = print,
) -> dict:
    """grukit's fused ``gru`` and torch.nn.LSTM (interleaved, here), then each peer of
    :mod:`grukit.peers` in its own process on the same weights and input (outputs checked
    equal there); medians and each peer's time over the fused ``gru``'s."""
    from grukit import peers as peer_module

    if not fused.available():
        raise RuntimeError(f"the fused kernels are unavailable: {fused.unavailable_reason()}")
    names = list(peers or peer_module.PEERS)
    report: dict = {"machine": _machine(), "peers": names, "shapes": {}}
    for shape in shapes:
        log(f"timing {shape} with the peers ...")
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(shape.steps, shape.batch, shape.input, generator=g) - 0.5
        gru = grukit.GRU(shape.input, shape.hidden)
        cands = [
            _module_candidate("fused gru", gru, x),
            _module_candidate("torch.nn.LSTM", nn.LSTM(shape.input, shape.hidden), x),
        ]
        _measure(cands, rounds, budget_s)
        med = {c.name: {k: statistics.median(v) for k, v in c.times.items()} for c in cands}
        with torch.no_grad():
            want = gru(x)[0].numpy()
        weights = {k[: -len("_l0")]: v.detach().numpy() for k, v in gru.state_dict().items()}
        found = peer_module.run_peers(weights, x.numpy(), want, names, rounds)
        entry: dict = {"shape": vars(shape), "median_s": med, "peers": found}
        entry["vs_fused_gru"] = {
            p: r["median_s"] / med["fused gru"]["train" if r["mode"] == "train" else "forward"]
            for p, r in found.items() if "median_s" in r
        }  # fmt: skip
        report["shapes"][shape.name] = entry
    return report


def format_peers_report(report: dict) -> str:
    from grukit.peers import PEERS

    shapes = list(report["shapes"])
    m = report["machine"]
    lines = [
        _machine_line(m),
        "",
        "### milliseconds (time over the fused gru's): forward without grad for the inference "
        "peers, training step for the others",
        "",
        "| candidate | mode | " + " | ".join(shapes) + " |",
        "|---|---|" + "---:|" * len(shapes),
    ]
    for name, mode in (("fused gru", "forward"), ("torch.nn.LSTM", "forward"),
                       ("fused gru", "train"), ("torch.nn.LSTM", "train")):  # fmt: skip
        cells = []
        for s in shapes:
            t = report["shapes"][s]["median_s"]
            ratio = t[name][mode] / t["fused gru"][mode]
            cells.append(f"{t[name][mode] * 1e3:.2f} ({ratio:.2f})")
        lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    for peer in report["peers"]:
        cells = []
        for s in shapes:
            r = report["shapes"][s]["peers"][peer]
            if "median_s" in r:
                ratio = report["shapes"][s]["vs_fused_gru"][peer]
                cells.append(f"{r['median_s'] * 1e3:.2f} ({ratio:.2f})")
            else:
                cells.append(r["error"][:60])
        lines.append(f"| {peer} | {PEERS[peer]} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "isa": _cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "grukit": grukit.__version__,
        "blas": "BLAS called directly" if torch.ops.grukit.uses_blas() else "at::mm fallback",
        "gemm_provider": fused.gemm_provider(),
    }


def machine_line() -> str:
    """This machine as every report names it: the CPU, its instruction set, threads, torch."""
    fused.available()  # _machine asks the kernels which GEMM they call
    return _machine_line(_machine())


def _machine_line(m: dict) -> str:
    """The first line of every report: the CPU, its instruction set, threads, torch (and, when
    measured, the GEMM path and the peak sgemm)."""
    line = f"{m['processor']} ({m.get('isa', '?')}), threads: {m['threads']}, torch {m['torch']}"
    if "gemm_provider" in m:
        line += f", GEMM provider {m['gemm_provider']}"
    if "peak_sgemm_gflops" in m:
        line += f", {m['blas']}, peak sgemm {m['peak_sgemm_gflops']:.0f} GFLOP/s"
    return line


def _cpu_capability() -> str:
    """The vector instruction set torch (and the fused kernels' build) uses here."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        return "unknown"


def peak_sgemm_gflops(size: int = 1536, rounds: int = 5) -> float:
    """The machine's sgemm throughput at torch's thread count: the best of ``rounds`` square
    float32 products of ``size`` through torch.mm (the ceiling the GEMM floor is measured
    against)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(rounds))
    return 2 * size**3 / best / 1e9


def gru_layer_flops(shape: Shape, train: bool) -> float:
    """Multiply-adds x 2 of one ``gru`` layer: forward 2 R 3H (I + H); a training step adds the
    input, weight and state gradients (twice the forward's)."""
    R, I, H = shape.steps * shape.batch, shape.input, shape.hidden
    forward = 2 * R * 3 * H * (I + H)
    return 3 * forward if train else forward


def _cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_report(report: dict) -> str:
    """The tables of ratios that the README shows."""
    lines = [
        _machine_line(report["machine"]),
        "",
    ]
    for mode, title in (("train", "training step (forward + backward)"), ("forward", "forward")):
        shapes = list(report["shapes"])
        lines.append(f"### {title}: time as a ratio to torch.nn.GRU / to torch.nn.LSTM")
        lines.append("")
        lines.append("| candidate | " + " | ".join(shapes) + " |")
        lines.append("|---|" + "---|" * len(shapes))
        names = list(report["shapes"][shapes[0]]["ratios"])
        for name in names:
            cells = []
            for s in shapes:
                r = report["shapes"][s]["ratios"][name][mode]
                cells.append(f"{r['vs_torch_gru']:.2f} / {r['vs_torch_lstm']:.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        ms = [
            f"{report['shapes'][s]['median_s']['torch.nn.GRU'][mode] * 1e3:.1f} / "
            f"{report['shapes'][s]['median_s']['torch.nn.LSTM'][mode] * 1e3:.1f}"
            for s in shapes
        ]
        lines.append("| (torch GRU / LSTM, ms) | " + " | ".join(ms) + " |")
        fr = [
            f"{report['shapes'][s]['ratios']['fused gru'][mode]['floor_fraction']:.0%}"
            for s in shapes
        ]
        lines.append("| fused gru, share of the GEMM floor's throughput | " + " | ".join(fr) + " |")
        pk = [
            f"{report['shapes'][s].get('fused_gru_share_of_peak', {}).get(mode, float('nan')):.0%}"
            for s in shapes
        ]
        lines.append("| fused gru, share of the machine's peak sgemm | " + " | ".join(pk) + " |")
        lines.append("")
    if "mingru_scan" in report:
        sc = report["mingru_scan"]
        sh = sc["shape"]
        lines.append(
            f"### minGRU at N={sh['batch']}, T={sh['steps']}, I={sh['input']}, H={sh['hidden']}: "
            "speed-up over the sequential loop"
        )
        lines.append("")
        lines.append("| backend | forward | training step |")
        lines.append("|---|---|---|")
        for name, s in sc["speedup_vs_sequential"].items():
            lines.append(f"| {name} | {s['forward']:.1f}x | {s['train']:.1f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grukit bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shapes",
        default=None,
        help="comma-separated, of S1..S5 (default: all; S2,S4 with --options)",
    )
    parser.add_argument(
        "--variants", default=",".join(grukit.VARIANTS), help="fused variants to time"
    )
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per shape, at most")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-scan", action="store_true", help="skip the minGRU scan timing")
    parser.add_argument("--json", default=None, help="write every timing to this file")
    parser.add_argument(
        "--options",
        action="store_true",
        help="time the in-cell options (recurrent dropout, zoneout, layer norm, ...) instead",
    )
    parser.add_argument(
        "--contend",
        type=int,
        default=None,
        metavar="N",
        help="time fused gru and torch.nn.LSTM on the quiet machine and beside N busy processes "
        "instead, and report each one's slowdown",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="time onnxruntime and OpenVINO (inference) and a JAX lax.scan GRU (training), each "
        "in its own process, beside the fused gru and torch.nn.LSTM instead (the bench extra)",
    )
    parser.add_argument(
        "--step",
        action="store_true",
        help="time one step at batch 1 (GRUCell, GRU.step) beside torch.nn.GRUCell and "
        "onnxruntime's GRU (with the bench extra), and every variant's GRUCell, instead",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="time on this device (cuda, cuda:N) instead: torch.nn.GRU (cuDNN) beside grukit's "
        "auto, reference and compiled paths for --variants (default gru,mgu here)",
    )
    parser.add_argument(
        "--contend-onnxruntime",
        action="store_true",
        help="with --contend: also time them with onnxruntime running in this process between "
        "the calls (needs onnx and onnxruntime)",
    )


def run(args: argparse.Namespace) -> int:
    from grukit.errors import ConfigError

    if args.threads:
        torch.set_num_threads(args.threads)
    default_shapes = "S2,S4" if args.options else ",".join(SHAPES)
    names = [s.strip() for s in (args.shapes or default_shapes).split(",") if s.strip()]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        raise ConfigError(f"unknown shape(s) {unknown}; valid: {', '.join(SHAPES)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in grukit.VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant(s) {bad}; valid: {', '.join(grukit.VARIANTS)}")
    if args.device:
        chosen = variants if args.variants != ",".join(grukit.VARIANTS) else ["gru", "mgu"]
        report = run_device_benchmark(
            args.device, [SHAPES[s] for s in names], chosen, rounds=args.rounds,
            budget_s=args.budget,
        )  # fmt: skip
        print(format_device_report(report))
    elif args.peers:
        report = run_peers_benchmark(
            [SHAPES[s] for s in names], rounds=args.rounds, budget_s=args.budget
        )
        print(format_peers_report(report))
    elif args.step:
        from grukit.variants import VARIANTS

        report = run_step_benchmark(rounds=args.rounds, variants=tuple(VARIANTS))
        print(format_step_report(report))
    elif args.contend is not None:
        if args.contend < 0:
            raise ConfigError(f"--contend takes a count of busy processes >= 0, got {args.contend}")
        report = run_contention_benchmark(
            [SHAPES[s] for s in names], busy=args.contend, onnxruntime=args.contend_onnxruntime,
            rounds=args.rounds, budget_s=args.budget,
        )  # fmt: skip
        print(format_contention_report(report))
    elif args.options:
        report = run_options_benchmark(
            [SHAPES[s] for s in names], rounds=args.rounds, budget_s=args.budget
        )
        print(format_options_report(report))
    else:
        report = run_benchmark(
            [SHAPES[s] for s in names], variants, rounds=args.rounds, budget_s=args.budget,
            scan=not args.no_scan,
        )  # fmt: skip
        print(format_report(report))
    if args.json:
        from grukit.checkpoint import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
