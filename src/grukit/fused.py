"""The fused CPU kernels (``csrc/fused_rnn.cpp``): build on first use, autograd wrapper.

The extension is compiled the first time a fused layer runs (about 15 s, one line is printed)
and cached in ``$GRUKIT_CACHE/kernels`` (default ``~/.cache/grukit/kernels``), keyed by every
file under ``csrc/``, the PyTorch version and the CPU's instruction set, so later processes load
it in well under a second. If it cannot be built (no C++ compiler, say), ``backend="auto"``
warns once and uses the reference path; ``GRUKIT_DISABLE_FUSED=1`` turns the kernels off.

Kernel contract (one layer, one direction, packed rows; see the C++ header comment):
``rnn_forward(x (R, H_in), h0 (N, H), weights..., batch_sizes (T,), spec, reverse, save,
recurrent, candidate, zoneout, ln_ih, ln_hh)`` returns ``output (R, H)``, ``h_n (N, H)`` and, when
``save``, a workspace ``(R, W*H + S)`` of the gate values, ``h_{t-1}`` and the layer-norm
statistics that ``rnn_backward`` must get back unchanged, with the same masks and gains
(:class:`grukit.cell_options.CellExtras`; ``None`` for an option that is off).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from grukit.cell_options import CellExtras
from grukit.reference import LayerWeights, reference_layer
from grukit.variants import Variant

__all__ = [
    "available", "unavailable_reason", "fused_layer", "kernel_spec", "call_count", "info",
    "set_thread_policy", "set_gemm_provider", "gemm_provider",
]  # fmt: skip

_CSRC = Path(__file__).parent / "csrc"
_SOURCE = _CSRC / "fused_rnn.cpp"  # the one translation unit; it includes the headers beside it
_CELL_KIND = {
    ("gru", "after"): 0,
    ("gru", "before"): 1,
    ("mgu", "before"): 2,
    ("mingru", "none"): 3,
}

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "reason": None}


def cache_dir() -> Path:
    root = os.environ.get("GRUKIT_CACHE") or os.path.join(Path.home(), ".cache", "grukit")
    return Path(root) / "kernels"


def _isa_flags() -> tuple[str, list[str]]:
    """Compiler flags for the vector instruction set PyTorch itself uses on this CPU."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        capability = "DEFAULT"
    if capability.startswith("AVX512"):
        return "AVX512", [
            "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
            "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
        ]  # fmt: skip
    if capability.startswith("AVX2"):
        return "AVX2", [
            "-mavx2",
            "-mfma",
            "-mf16c",
            "-DCPU_CAPABILITY=AVX2",
            "-DCPU_CAPABILITY_AVX2",
        ]
    return "DEFAULT", ["-DCPU_CAPABILITY=DEFAULT"]


def source_key(folder: Path, build: str) -> str:
    """The kernel cache key: every file under ``folder`` (a header change rebuilds) and the
    build's own description (torch version, ISA, flags)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(build.encode())
    return digest.hexdigest()[:16]


def _build() -> None:
    from torch.utils import cpp_extension

    isa, flags = _isa_flags()
    # -fopenmp: at::parallel_for is an OpenMP template, compiled into this extension; without
    # the flag its pragmas vanish and every "parallel" loop runs on one thread
    cflags = ["-O3", "-std=c++17", "-fopenmp", *flags]
    key = source_key(_CSRC, f"{torch.__version__}|{isa}|{cflags}")
    name = f"grukit_fused_{key}"
    build_dir = cache_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / f"{name}.so").exists():
        print(
            f"grukit: compiling the fused CPU kernels ({isa}) into {build_dir} "
            "(once; about 15 s)...",
            file=sys.stderr,
            flush=True,
        )
    cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=cflags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


def _register_fakes() -> None:
    """Shape-only versions of the kernels, so that torch.compile and torch.export trace a
    layer without running it: ``rnn_forward`` -> ``out (R, H)``, ``h_n (N, H)``, the workspace
    ``(R, width)`` (``(0,)`` when not saved); ``rnn_step`` -> ``h' (N, H)``; ``rnn_backward``
    -> a gradient shaped as each input it was asked for, ``(0,)`` for the others."""

    @torch.library.register_fake("grukit::rnn_forward")
    def _(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, spec, reverse, save, recurrent=None,
          candidate=None, zoneout=None, ln_ih=None, ln_hh=None):  # fmt: skip
        R, H = x.shape[0], h0.shape[1]
        width = int(torch.ops.grukit.workspace_width(spec, H, recurrent is not None,
                                                     ln_ih is not None))  # fmt: skip
        ws = x.new_empty((R, width)) if save else x.new_empty((0,))
        return x.new_empty((R, H)), h0.new_empty(h0.shape), ws

    @torch.library.register_fake("grukit::rnn_step")
    def _(x, h, w_ih, w_hh, b_ih, b_hh, spec):  # fmt: skip
        return h.new_empty(h.shape)

    @torch.library.register_fake("grukit::rnn_backward")
    def _(grad_out, grad_hn, x, h0, w_ih, w_hh, b_ih, b_hh, ws, batch_sizes, spec, reverse,
          needs, recurrent=None, candidate=None, zoneout=None, ln_ih=None, ln_hh=None):  # fmt: skip
        inputs = (x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh)
        return [
            x.new_empty(t.shape) if n and t is not None else x.new_empty((0,))
            for t, n in zip(inputs, needs, strict=True)
        ]


def _register_batching_rules() -> None:
    """vmap rules of the kernels (torch.func's ``vmap``, ``jacrev``, ``is_grads_batched``):
    the op runs once per vmapped item, on that item's slices of the batched arguments, and the
    results are stacked along a new leading dimension. Results equal the unbatched calls'."""

    def per_item(op: Any) -> Callable[..., tuple[Any, Any]]:
        def rule(info: Any, in_dims: tuple, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            results = []
            for i in range(info.batch_size):
                item = [
                    a.select(d, i).contiguous()
                    if isinstance(d, int) and isinstance(a, Tensor)
                    else a
                    for a, d in zip(args, in_dims, strict=True)
                ]
                results.append(op(*item, **kwargs))
            stacked = [torch.stack(list(parts)) for parts in zip(*results, strict=True)]
            return (tuple(stacked) if isinstance(results[0], tuple) else stacked), 0

        return rule

    torch.library.register_vmap("grukit::rnn_forward", per_item(torch.ops.grukit.rnn_forward))
    torch.library.register_vmap("grukit::rnn_backward", per_item(torch.ops.grukit.rnn_backward))


def _apply_gemm_env() -> None:
    """``GRUKIT_GEMM`` (``auto``, ``blas`` or ``brgemm``) chooses the GEMM provider at load."""
    choice = os.environ.get("GRUKIT_GEMM", "auto") or "auto"
    if choice not in ("auto", *GEMM_PROVIDERS):
        raise ValueError(f"GRUKIT_GEMM must be auto, blas or brgemm, got {choice!r}")
    if choice == "brgemm" and not torch.ops.grukit.brgemm_available():
        raise RuntimeError("GRUKIT_GEMM=brgemm, but oneDNN's brgemm does not run here")
    torch.ops.grukit.set_gemm_provider(-1 if choice == "auto" else GEMM_PROVIDERS.index(choice))


def unavailable_reason() -> str | None:
    """Why the fused kernels cannot be used in this process (None when they can).

    The first call builds or loads the extension.
    """
    if _state["tried"]:
        return _state["reason"]
    with _lock:
        if not _state["tried"]:
            reason = None
            if os.environ.get("GRUKIT_DISABLE_FUSED", "") not in ("", "0"):
                reason = "they are disabled by GRUKIT_DISABLE_FUSED"
            else:
                try:
                    _build()
                    _register_fakes()
                    _register_batching_rules()
                    _apply_gemm_env()
                except Exception as exc:  # compiler missing or failing: fall back, loudly
                    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    reason = f"they could not be built ({type(exc).__name__}: {first_line[:300]})"
            _state["reason"] = reason
            _state["tried"] = True
            if reason is not None and "GRUKIT_DISABLE_FUSED" not in reason:
                warnings.warn(
                    f"grukit: the fused CPU kernels are unavailable: {reason}; "
                    "backend='auto' uses the pure-PyTorch reference path (slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _state["reason"]


def available() -> bool:
    """True when the fused kernels are built and loaded (builds them on the first call)."""
    return unavailable_reason() is None


def call_count() -> int:
    """How many times the C++ forward kernel ran in this process (to check the fast path ran)."""
    return int(torch.ops.grukit.call_count()) if available() else 0


def kernel_spec(v: Variant) -> list[int]:
    """The kernel's description of a variant: ``[cell, gates, gate_x, gate_h, gate_bias_hh]``.

    Derived from :class:`grukit.variants.Variant`, the one definition of each variant.
    """
    return list(_kernel_spec(v))


_SPECS: dict[int, tuple[Variant, tuple[int, ...]]] = {}  # by id (hashing a Variant is slow)


def _kernel_spec(v: Variant) -> tuple[int, ...]:
    found = _SPECS.get(id(v))
    if found is not None and found[0] is v:
        return found[1]
    gate = v.gates[0]
    in_bias_hh = gate.bias and (gate.h or not gate.x)
    spec = (_CELL_KIND[(v.family, v.reset)], len(v.gates), int(gate.x), int(gate.h),
            int(in_bias_hh))  # fmt: skip
    _SPECS[id(v)] = (v, spec)  # the Variant is kept alive, so its id is not reused
    return spec


@functools.lru_cache(maxsize=256)
def _batch_sizes_tensor(batch_sizes: tuple[int, ...]) -> Tensor:
    """The kernel's ``batch_sizes`` of a short step list (one step: a streaming call), cached."""
    return torch.tensor(batch_sizes, dtype=torch.long)


_NO_EXTRAS = CellExtras()


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


class _FusedLayer(torch.autograd.Function):
    """Autograd over the C++ forward/backward of one layer-direction.

    The C++ backward is not itself differentiable. When a second derivative is asked for
    (``create_graph=True``), the backward differentiates the reference implementation of the
    same layer instead: correct to any order, at the reference's speed. ``forward`` and
    ``setup_context`` are apart and the ops have batching rules, so torch.func's transforms
    (``grad``, ``vmap``, ``jacrev``) apply (``generate_vmap_rule``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor,
        h0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor | None,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        ln_ih: Tensor | None,
        ln_hh: Tensor | None,
        batch_sizes: Tensor,
        masks: tuple[Tensor | None, Tensor | None, Tensor | None],
        variant: Variant,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return torch.ops.grukit.rnn_forward(
            x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, _kernel_spec(variant), reverse, True,
            *masks, ln_ih, ln_hh,
        )  # fmt: skip

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, batch_sizes, masks, variant, reverse = inputs
        ws = output[2]
        ctx.mark_non_differentiable(ws)
        # no zero gradient for ws (nor for an unused out / h_n): backward takes None. Left on,
        # autograd filled an (R, W*H) tensor of zeros every step (65 MB at the bench's S5).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ws, batch_sizes)
        ctx.masks, ctx.variant, ctx.reverse = masks, variant, reverse

    @staticmethod
    def backward(
        ctx: Any, grad_out: Tensor | None, grad_hn: Tensor | None, _grad_ws: Any = None
    ) -> tuple:
        x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ws, batch_sizes = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros(x.shape[0], h0.shape[1], dtype=x.dtype)
        if grad_hn is None:
            grad_hn = torch.zeros_like(h0)
        needs = [int(n) for n in ctx.needs_input_grad[:8]]
        saved = (x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, grad_out, grad_hn)
        if (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in saved)) or (
            not torch.compiler.is_compiling() and _legacy_batched(grad_out, grad_hn)
        ):  # fmt: skip
            # create_graph=True, an outer torch.func.grad, or autograd.grad's is_grads_batched
            # (whose vmap has no rule for the kernel): the differentiable reference backward
            grads = _reference_backward(ctx, grad_out, grad_hn, needs)
        else:
            # the kernel makes the gradients contiguous itself, on the threads it runs on
            grads = torch.ops.grukit.rnn_backward(
                grad_out, grad_hn, x, h0, w_ih, w_hh, b_ih, b_hh, ws,
                batch_sizes, _kernel_spec(ctx.variant), ctx.reverse, needs, *ctx.masks, ln_ih,
                ln_hh,
            )  # fmt: skip
        out = [
            g if n and g is not None and g.numel() > 0 else None
            for g, n in zip(grads, needs, strict=True)
        ]
        return (*out, None, None, None, None)


def _legacy_batched(*tensors: Tensor) -> bool:
    """Whether any of ``tensors`` is batched by autograd.grad's ``is_grads_batched`` vmap."""
    return any(torch._C._functorch.is_legacy_batchedtensor(t) for t in tensors)


def _reference_backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor, needs: list[int]) -> list:
    """First derivatives of the layer through the reference, as a graph (for double backward):
    the vector-Jacobian product of :func:`grukit.reference.reference_layer` by ``torch.func.vjp``,
    which composes with autograd and with torch.func's transforms alike."""
    x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, _, batch_sizes = ctx.saved_tensors
    inputs = [x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh]
    wanted = [i for i, (t, n) in enumerate(zip(inputs, needs, strict=True)) if n and t is not None]
    steps = batch_sizes.tolist()

    def layer(*chosen: Tensor) -> tuple[Tensor, Tensor]:
        full = list(inputs)
        for i, t in zip(wanted, chosen, strict=True):
            full[i] = t
        extras = CellExtras(*ctx.masks, full[6], full[7])
        return reference_layer(
            ctx.variant, full[0], steps, full[1], LayerWeights(*full[2:6]), ctx.reverse,
            None if extras.empty else extras,
        )  # fmt: skip

    _, vjp = torch.func.vjp(layer, *(inputs[i] for i in wanted))
    grads: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, vjp((grad_out, grad_hn)), strict=True):
        grads[i] = g
    return grads


def fused_layer(
    v: Variant,
    data: Tensor,
    batch_sizes: Sequence[int] | Tensor,
    h0: Tensor,
    w: LayerWeights,
    reverse: bool = False,
    extras: CellExtras | None = None,
) -> tuple[Tensor, Tensor]:
    """One layer-direction through the fused kernels; the contract of
    :func:`grukit.reference.reference_layer` (CPU, float32/float64)."""
    if isinstance(batch_sizes, Tensor):
        bs = batch_sizes
    elif len(batch_sizes) <= 4 and not torch.compiler.is_compiling():
        bs = _batch_sizes_tensor(tuple(int(n) for n in batch_sizes))
    else:
        bs = torch.tensor(list(batch_sizes), dtype=torch.long)
    e = extras if extras is not None else _NO_EXTRAS
    # x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh: the kernel reads contiguous tensors
    tensors = [_contiguous(t) for t in (data, h0, *w, e.ln_ih, e.ln_hh)]
    masks = tuple(_contiguous(m) for m in (e.recurrent, e.candidate, e.zoneout))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, h_n, _ = _FusedLayer.apply(*tensors, bs, masks, v, reverse)
        return out, h_n
    # inference: no graph, no workspace, no autograd.Function
    out, h_n, _ = torch.ops.grukit.rnn_forward(
        *tensors[:6], bs, _kernel_spec(v), reverse, False, *masks, *tensors[6:]
    )
    return out, h_n


class StepPlan:
    """A cell's one step straight into the kernel, for inference (no grad) on batched input:
    what :class:`grukit.GRUCell` checks and builds per call, done once. A call returns ``None``
    (and the cell takes its general path, with its full checks and messages) unless the
    parameters are still the ones the plan was made for and the input and state are 2-D, of
    the plan's dtype, on the CPU and of the expected sizes."""

    __slots__ = ("params", "spec", "dtype", "input_size", "hidden_size", "names")

    def __init__(self, v: Variant, params: Any, names: tuple[str, ...], input_size: int,
                 hidden_size: int) -> None:  # fmt: skip
        self.names = names
        self.params = tuple(params.get(k) for k in names)
        self.spec = _kernel_spec(v)
        self.dtype = self.params[0].dtype
        self.input_size, self.hidden_size = input_size, hidden_size

    @classmethod
    def of(
        cls, v: Variant, params: Any, input_size: int, hidden_size: int, suffix: str = ""
    ) -> StepPlan | None:
        """The plan of the layer whose parameters are ``weight_ih{suffix}``... in ``params``
        (a module's ``_parameters``), or None if they are not contiguous CPU tensors."""
        names = tuple(k + suffix for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        for t in (params.get(k) for k in names):
            if t is not None and (not t.is_contiguous() or t.device.type != "cpu"):
                return None
        return cls(v, params, names, input_size, hidden_size)

    def __call__(self, x: Tensor, h: Tensor, params: Any) -> Tensor | None:
        mine = self.params
        for i, k in enumerate(self.names):
            if params.get(k) is not mine[i]:
                return None
        if x.dim() != 2 or h.dim() != 2 or x.dtype != self.dtype or h.dtype != self.dtype:
            return None
        n = x.shape[0]
        if n == 0 or x.shape[1] != self.input_size or h.shape != (n, self.hidden_size):
            return None
        if x.device.type != "cpu" or h.device.type != "cpu" or x.requires_grad:
            return None
        return torch.ops.grukit.rnn_step(
            x.contiguous(), h.contiguous(), mine[0], mine[1], mine[2], mine[3], self.spec
        )


def profile(fn: Any) -> dict[str, float]:
    """Seconds per kernel phase while ``fn()`` runs (forward, backward, GEMMs, element-wise)."""
    _require()
    torch.ops.grukit.set_profiling(True)
    try:
        fn()
        seconds, names = torch.ops.grukit.profile()
    finally:
        torch.ops.grukit.set_profiling(False)
    return dict(zip(names, seconds, strict=True))


def gemm_floor(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor, dA: Tensor,
               backward: bool) -> None:  # fmt: skip
    """Run only the matrix products of a ``gru`` layer, through the kernels' GEMM layer and
    provider (the benchmark's floor)."""
    torch.ops.grukit.gemm_floor(x, h, w_ih, w_hh, hs, dA, backward)


#: The float GEMM providers the kernels can call (``set_gemm_provider``).
GEMM_PROVIDERS = ("blas", "brgemm")


def set_gemm_provider(provider: str) -> None:
    """Which library computes the kernels' float32 matrix products. ``"auto"``: the CPU's default
    (``"brgemm"`` on CPUs with AVX-512 where it runs, else ``"blas"``); ``"blas"``: the sgemm
    torch exports (MKL in torch's x86 wheels); ``"brgemm"``: oneDNN's batch-reduce GEMM
    micro-kernel inside torch (through ``at::native::cpublas::brgemm``), for the products whose
    operands it reads as stored and whose right-hand matrix has at most 2^20 elements, the
    others on BLAS. float64 always runs on BLAS. Every provider gives results bit-identical for
    any thread count; two providers agree to rounding. The environment variable
    ``GRUKIT_GEMM`` (``auto``, ``blas``, ``brgemm``) sets it when the kernels load."""
    if provider not in ("auto", *GEMM_PROVIDERS):
        raise ValueError(
            f"GEMM provider must be one of {('auto', *GEMM_PROVIDERS)}, got {provider!r}"
        )
    _require()
    if provider == "brgemm" and not torch.ops.grukit.brgemm_available():
        raise RuntimeError("oneDNN's brgemm does not run on this machine (or this torch build)")
    torch.ops.grukit.set_gemm_provider(-1 if provider == "auto" else GEMM_PROVIDERS.index(provider))


def gemm_provider() -> str:
    """The float GEMM provider in use: ``"blas"`` or ``"brgemm"``."""
    _require()
    return GEMM_PROVIDERS[int(torch.ops.grukit.gemm_provider())]


#: How each kernel call picks its thread count (``set_thread_policy``).
THREAD_POLICIES = ("adaptive", "all", "one")


def set_thread_policy(policy: str) -> None:
    """How each kernel call picks its thread count. ``"adaptive"`` (the default): one thread or
    all of torch's (``torch.get_num_threads()``), whichever has lately been faster for calls of
    that op and shape, so that beside busy processes the kernels fall back to one thread
    instead of stalling on a descheduled one; ``"all"``: always torch's count; ``"one"``:
    always one. Results are bit-identical under every policy. Resets what was learnt."""
    if policy not in THREAD_POLICIES:
        raise ValueError(f"thread policy must be one of {THREAD_POLICIES}, got {policy!r}")
    _require()
    torch.ops.grukit.set_thread_policy(THREAD_POLICIES.index(policy))


def info() -> dict[str, Any]:
    """What the kernels run on: the GEMM path and provider, the products run per provider
    (``gemm_calls``; ``brgemm_transposed_calls``: how many of brgemm's were weight gradients,
    ``A^T B`` with a narrow B, computed as ``(B^T A)^T``), the thread policy and, under the
    adaptive policy, how many calls ran on one thread and on all since the policy was last set,
    ``overlapped_calls``: forward and backward calls since the kernels loaded that ran the
    two-thread overlap (small steps: one thread runs the recurrence while the other projects
    the next chunk's input, or forms the finished chunks' gradients), and per kind of call (op
    and shape) the mean times it has learnt for both."""
    _require()
    one, every = torch.ops.grukit.thread_choices()
    learnt = torch.ops.grukit.thread_kinds()
    calls = torch.ops.grukit.gemm_calls()
    kinds = [
        {"one_thread_ms": a * 1e-6, "all_threads_ms": b * 1e-6, "calls": int(c)}
        for a, b, c in zip(learnt[0::3], learnt[1::3], learnt[2::3], strict=True)
    ]
    return {
        "gemm": "BLAS called directly" if torch.ops.grukit.uses_blas() else "at::mm fallback",
        "gemm_provider": gemm_provider(),
        "brgemm_available": bool(torch.ops.grukit.brgemm_available()),
        "gemm_calls": dict(zip(GEMM_PROVIDERS, map(int, calls[:2]), strict=True)),
        "brgemm_transposed_calls": int(calls[2]),
        "threads": torch.get_num_threads(),
        "thread_policy": THREAD_POLICIES[int(torch.ops.grukit.thread_policy())],
        "calls_on_one_thread": int(one),
        "calls_on_all_threads": int(every),
        "overlapped_calls": dict(
            zip(("forward", "backward"), map(int, torch.ops.grukit.overlapped_calls()), strict=True)
        ),
        "kinds": kinds,
    }


def _require() -> None:
    if not available():
        raise RuntimeError(f"the fused kernels are unavailable: {unavailable_reason()}")
