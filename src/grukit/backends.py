"""Which implementation runs a layer: explicit, and loud when it cannot do what was asked.

- ``"reference"``: the pure-PyTorch loop (:mod:`grukit.reference`); any device, any dtype.
- ``"fused"``: the C++ kernels (:mod:`grukit.fused`); CPU tensors of float32 or float64.
- ``"scan"``: minGRU's parallel log-space scan (:mod:`grukit.scan`); any device.
- ``"auto"``: ``fused`` where it can run, else ``scan`` for minGRU, else ``reference``. If the
  kernels cannot be built, ``auto`` warns once and falls back; an explicit ``"fused"`` raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from grukit.cell_options import CellExtras
from grukit.reference import LayerWeights, reference_layer
from grukit.variants import BASELINES, Variant

__all__ = ["BACKENDS", "LayerFunction", "check_backend", "resolve_backend", "layer_function"]

BACKENDS: tuple[str, ...] = ("auto", "fused", "reference", "scan")

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
    else:
        raise ValueError(f"unresolved backend {backend!r}")
    _LAYER_FUNCTIONS[backend] = fn
    return fn


_LAYER_FUNCTIONS: dict[str, LayerFunction] = {"reference": reference_layer}
