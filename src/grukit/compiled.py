"""``backend="compiled"``: the reference loop with each step's cell compiled by ``torch.compile``.

The loop over time stays in Python (:func:`grukit.reference.reference_layer`), and the step
``h' = cell(W x_t, h)`` of any variant (:func:`grukit.reference.cell_step`, the one definition
of its math) is compiled once per variant, device and set of in-cell options. On CUDA that
fuses a step's element-wise work into a few Triton kernels beside the recurrent GEMM, instead
of one launch per operation: the GPU path for the variants cuDNN does not have. On the CPU the
fused kernels are faster (and ``auto`` never picks this backend); it runs there for tests.

CUDA graphs (``mode="reduce-overhead"``) are not used: a step's outputs feed the next step and
are kept for the layer's output, which a replayed graph would overwrite, and no GPU was at hand
to test a version that copies them out. :data:`COMPILE_OPTIONS` holds the arguments given to
``torch.compile`` (tests set ``backend="aot_eager"`` to check the wiring without a C compiler).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from grukit.cell_options import CellExtras
from grukit.reference import LayerWeights, cell_step, reference_layer
from grukit.variants import Variant

__all__ = ["COMPILE_OPTIONS", "compiled_cell", "compiled_layer"]

#: keyword arguments of ``torch.compile`` for the step (cleared caches take a change)
COMPILE_OPTIONS: dict[str, Any] = {"fullgraph": True, "dynamic": None}

_CELLS: dict[tuple[Any, ...], Callable[..., Tensor]] = {}


def compiled_cell(key: tuple[Any, ...]) -> Callable[..., Tensor]:
    """:func:`grukit.reference.cell_step`, compiled for the calls that ``key`` describes.

    torch.compile keeps its compiled versions on a function's code object and gives up after a
    few (``torch._dynamo.config.recompile_limit``), while one process may run many variants,
    dtypes and option sets; so each key compiles its own copy of the step's code object."""
    key = (*key, tuple(sorted(COMPILE_OPTIONS.items())))
    fn = _CELLS.get(key)
    if fn is None:
        code = cell_step.__code__.replace(co_name=f"cell_step_{len(_CELLS)}")
        copy = types.FunctionType(code, cell_step.__globals__, code.co_name,
                                  cell_step.__defaults__, cell_step.__closure__)  # fmt: skip
        fn = _CELLS[key] = torch.compile(copy, **COMPILE_OPTIONS)
    return fn


def compiled_layer(
    v: Variant,
    data: Tensor,
    batch_sizes: Sequence[int],
    h0: Tensor,
    w: LayerWeights,
    reverse: bool = False,
    extras: CellExtras | None = None,
) -> tuple[Tensor, Tensor]:
    """One layer in one direction over packed rows, as :func:`reference_layer` (same
    arguments and results), with the compiled step."""
    options = () if extras is None else tuple(t is None for t in extras)
    key = (data.device.type, v.name, data.dtype, torch.is_grad_enabled(), options)
    return reference_layer(v, data, batch_sizes, h0, w, reverse, extras, cell=compiled_cell(key))
