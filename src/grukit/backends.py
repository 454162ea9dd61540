"""Which implementation runs a layer: explicit, and loud when it cannot do what was asked.

- ``"reference"``: the pure-PyTorch loop (:mod:`grukit.reference`); any device, any dtype.
- ``"fused"``: the C++ kernels (:mod:`grukit.fused`); CPU tensors of float32 or float64.
- ``"scan"``: minGRU's parallel log-space scan (:mod:`grukit.scan`); any device.
- ``"torch"``: torch's own GRU kernel (cuDNN on CUDA, ATen on the CPU) on this module's
  parameters, which are already in its layout; ``variant="gru"`` without in-cell options.
- ``"compiled"``: the reference loop with each step's cell compiled by ``torch.compile``
  (:mod:`grukit.compiled`): the GPU path of the variants cuDNN does not have; any variant.
- ``"auto"``: on CUDA, ``torch`` for a plain ``gru`` (:func:`uses_torch_gru`); else ``fused``
  where it can run, else ``scan`` for minGRU, else ``reference``. If the kernels cannot be
  built, ``auto`` warns once and falls back; an explicit ``"fused"`` raises.

On CUDA, cuDNN computes float32 GRUs with TF32 matrix products while
``torch.backends.cudnn.allow_tf32`` is True (torch's default): about 1e-3 relative error
against full float32. Set it to False for float32 results, or take ``backend="reference"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from grukit.cell_options import CellExtras
from grukit.reference import LayerWeights, reference_layer
from grukit.variants import BASELINES, Variant

__all__ = [
    "BACKENDS",
    "LayerFunction",
    "check_backend",
    "layer_function",
    "resolve_backend",
    "uses_torch_gru",
]

BACKENDS: tuple[str, ...] = ("auto", "compiled", "fused", "reference", "scan", "torch")

#: ``(variant, data, batch_sizes, h0, weights, reverse, extras) -> (output, h_n)``
LayerFunction = Callable[
    [Variant, Tensor, Sequence[int], Tensor, LayerWeights, bool, CellExtras | None],
    tuple[Tensor, Tensor],
]

FUSED_DTYPES = (torch.float32, torch.float64)


def check_backend(backend: object, variant: str, owner: str) -> str:
    """Validate a ``backend=`` argument at construction time."""
    if backend not in BACKENDS:
        raise ValueError(
            f"{owner}: unknown backend {backend!r}; valid backends are: {', '.join(BACKENDS)}"
        )
    assert isinstance(backend, str)
    if variant in BASELINES and backend not in ("auto", "reference"):
        raise ValueError(
            f"{owner}: variant {variant!r} runs torch's own implementation; "
            f"backend={backend!r} applies to the GRU variants only (use 'auto')"
        )
    if backend == "torch" and variant != "gru":
        raise ValueError(
            f"{owner}: backend='torch' runs torch's own GRU kernel, which computes variant "
            f"'gru' only; variant {variant!r} needs 'auto', 'fused' or 'reference'"
        )
    if backend == "scan" and variant != "mingru":
        raise ValueError(
            f"{owner}: backend='scan' is minGRU's parallel scan; variant {variant!r} is "
            "recurrent in h and needs 'auto', 'fused' or 'reference'"
        )
    if backend in ("auto", "fused") and variant not in BASELINES:
        # build or load the kernels now, in eager Python: a first forward pass inside
        # torch.compile could not (a lock and a compiler call cannot be traced)
        from grukit import fused

        fused.unavailable_reason()
    return backend


def uses_torch_gru(backend: str, variant: str, device: torch.device, options: bool) -> bool:
    """Whether a layer runs torch's own GRU kernel: ``backend="torch"``, or ``"auto"`` for a
    plain ``gru`` (no in-cell ``options``) on CUDA, where cuDNN runs the whole stack."""
    if variant != "gru" or options:
        return False
    return backend == "torch" or (backend == "auto" and device.type == "cuda")


def _fused_blocker(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused kernels cannot run on these tensors (None if they can)."""
    if device.type != "cpu":
        return f"the fused kernels run on CPU tensors, got a tensor on {device}"
    if dtype not in FUSED_DTYPES:
        return f"the fused kernels run float32 and float64, got {dtype}"
    from grukit import fused

    return fused.unavailable_reason()


def resolve_backend(
    backend: str, variant: Variant, device: torch.device, dtype: torch.dtype
) -> str:
    """The backend that will run: ``backend`` itself, or what ``"auto"`` picks for these tensors."""
    if backend == "fused":
        reason = _fused_blocker(device, dtype)
        if reason is not None:
            raise RuntimeError(f"backend='fused' cannot run: {reason}. Use backend='auto'.")
        return "fused"
    if backend != "auto":
        return backend
    if _fused_blocker(device, dtype) is None:
        return "fused"
    return "scan" if variant.family == "mingru" else "reference"


def layer_function(backend: str) -> LayerFunction:
    """The function that runs one layer-direction for a resolved backend name."""
    fn = _LAYER_FUNCTIONS.get(backend)
    if fn is not None:
        return fn
    if backend == "scan":
        from grukit.scan import mingru_scan_layer as fn
    elif backend == "fused":
        from grukit.fused import fused_layer as fn
    elif backend == "compiled":
        from grukit.compiled import compiled_layer as fn
    else:
        raise ValueError(f"unresolved backend {backend!r}")
    _LAYER_FUNCTIONS[backend] = fn
    return fn


_LAYER_FUNCTIONS: dict[str, LayerFunction] = {"reference": reference_layer}
