"""Regularisation inside the cell: the options, their checks, and the masks every backend gets.

Five options act inside the recurrence of every GRU-family variant (``h`` the state that
enters a step, ``h_new`` what the variant's update gives, ``n`` its candidate):

- ``recurrent_dropout`` ``p``: variational dropout on the state that feeds the recurrent
  matmuls, ``h~ = m * h`` with one mask ``m`` of ``Bernoulli(1 - p) / (1 - p)`` per sequence and
  layer-direction, the same at every step (Gal & Ghahramani 2016, arXiv 1512.05287). Only the
  products with ``weight_hh`` read ``h~``; the update still carries ``h``. Reset-before cells
  feed ``r * h~`` to the candidate's matmul.
- ``candidate_dropout`` ``p``: dropout on the candidate, ``n~ = m_t * n`` with a fresh mask per
  step, which the update then writes (Semeniuta et al. 2016, arXiv 1603.05118): the carried
  state is never zeroed.
- ``zoneout`` ``p``: each unit keeps its previous value with probability ``p``,
  ``h' = m_t * h + (1 - m_t) * h_new`` with ``m_t ~ Bernoulli(p)`` per step in training and
  ``m_t = p`` (the expectation) in evaluation (Krueger et al. 2016, arXiv 1606.01305). For
  minGRU, ``h' = h + (1 - m) z (n - h)``: still a linear recurrence, so the scan applies.
- ``layer_norm``: layer normalisation (Ba et al. 2016, arXiv 1607.06450) of every block's input
  pre-activation ``W_k x`` and recurrent pre-activation ``U_k h~``, each over its ``H`` units with
  its own learnable gain; the block's existing biases (``b_ik``, ``b_hk``) are the normalisation's
  shift, so no parameter is redundant. For ``gru`` (reset after the matmul) the reset gate
  multiplies the *normalised* recurrent term: ``n = tanh(LN(W_n x) + b_in + r * (LN(U_n h~) +
  b_hn))``; for reset-before cells it multiplies the state before the matmul, which is then
  normalised: ``LN(U_n (r * h~))``. Gates made of a bias alone (GRU3, MGU3) have nothing to
  normalise. The statistics are those of ``torch.nn.functional.layer_norm`` (biased variance,
  ``eps = 1e-5``).
- ``weight_drop`` ``p``: DropConnect on ``weight_hh``, one mask per forward call and
  layer-direction (Wan et al. 2013; Merity et al. 2017's AWD-LSTM): ``U~ = M * U``.

The dropout masks are scaled by ``1 / (1 - p)`` (inverted dropout, so evaluation uses the plain
cell). Masks are drawn here, in Python, from torch's generator (or one you pass) and handed to
every backend: the fused kernel draws no random numbers, so it agrees with the reference given
the same masks and stays bit-identical across thread counts. :func:`draw_masks` makes them and
:class:`LayerMasks` holds one layer-direction's; ``GRU.forward(..., masks=...)`` takes them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor

from grukit.variants import BASELINES, Variant

__all__ = ["CellExtras", "CellOptions", "LayerMasks", "draw_masks", "LAYER_NORM_EPS"]

#: eps of the in-cell layer normalisation (torch.nn.functional.layer_norm's default).
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class CellOptions:
    """The in-cell options of a recurrent stack (see the module docstring for their math)."""

    recurrent_dropout: float = 0.0
    candidate_dropout: float = 0.0
    zoneout: float = 0.0
    layer_norm: bool = False
    weight_drop: float = 0.0

    @functools.cached_property
    def any(self) -> bool:
        """True when some option is on (else every backend runs the plain cell)."""
        return any(getattr(self, f.name) for f in fields(self))

    def check(self, variant: str, owner: str = "grukit") -> CellOptions:
        """Validate against ``variant``; returns ``self``. Raises ValueError with the reason."""
        for name in ("recurrent_dropout", "candidate_dropout", "zoneout", "weight_drop"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
                raise ValueError(
                    f"{owner}: {name} must be a probability in [0, 1), got {p!r}"
                    + (" (1 would drop every unit)" if p == 1 else "")
                )
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"{owner}: layer_norm must be True or False, got {self.layer_norm!r}")
        if not self.any:
            return self
        if variant in BASELINES:
            on = [f.name for f in fields(self) if getattr(self, f.name)]
            raise ValueError(
                f"{owner}: variant {variant!r} runs torch's own module, which has no in-cell "
                f"options; {', '.join(on)} apply to the GRU-family variants only"
            )
        if variant == "mingru":
            for name in ("recurrent_dropout", "weight_drop"):
                if getattr(self, name):
                    raise ValueError(
                        f"{owner}: {name} acts on the recurrent matmul, and minGRU has none "
                        "(its gate and candidate read the input only); use zoneout or "
                        "candidate_dropout"
                    )
        return self


class LayerMasks(NamedTuple):
    """The masks of one layer-direction for one forward call (``None``: option off).

    recurrent: ``(N, H)``, one row per sequence (the sorted batch order of a PackedSequence).
    candidate: ``(R, H)``, one row per packed row (``R = sum(batch_sizes)``; ``T * N`` padded).
    zoneout: ``(R, H)`` keep mask in training, or ``(H,)`` filled with ``p`` (evaluation).
    weight: ``weight_hh``'s shape, the DropConnect mask.
    """

    recurrent: Tensor | None = None
    candidate: Tensor | None = None
    zoneout: Tensor | None = None
    weight: Tensor | None = None


class CellExtras(NamedTuple):
    """What one layer-direction call hands a backend beyond the plain weights.

    The step masks of :class:`LayerMasks` (``weight_drop`` is applied to ``weight_hh`` before
    the call) and the layer-norm gains: ``ln_ih`` ``(Gx*H,)`` for the input pre-activations,
    ``ln_hh`` ``(Gh*H,)`` for the recurrent ones (``None`` without ``layer_norm``).
    """

    recurrent: Tensor | None = None
    candidate: Tensor | None = None
    zoneout: Tensor | None = None
    ln_ih: Tensor | None = None
    ln_hh: Tensor | None = None

    @property
    def empty(self) -> bool:
        return all(t is None for t in self)


#: Masks are drawn at this resolution: a keep probability ``q`` is ``round(q * 2**16) / 2**16``.
MASK_RESOLUTION_BITS = 16


def bernoulli_mask(
    shape: tuple[int, ...], keep: float, like: Tensor, gen: torch.Generator | None
) -> Tensor:
    """A ``{0, 1}`` tensor of ``like``'s dtype and device, 1 with probability ``keep``.

    Four 16-bit uniforms come from every 64-bit word the generator draws (its draws are the
    cost of a mask, and ``bernoulli_`` spends one per element), so ``keep`` is resolved to
    ``2**-16``.
    """
    n = 1
    for d in shape:
        n *= d
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device)
    words.random_(-(2**63), None, generator=gen)  # all 64 bits uniform
    lanes = words.view(torch.int16)[:n]  # uniform on [-2**15, 2**15)
    threshold = round(keep * (1 << MASK_RESOLUTION_BITS)) - (1 << (MASK_RESOLUTION_BITS - 1))
    if threshold >= 1 << (MASK_RESOLUTION_BITS - 1):  # keep rounds to 1 (no int16 holds 2**15)
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    return (lanes < threshold).to(like.dtype).view(shape)


def _dropout_mask(
    shape: tuple[int, ...], p: float, like: Tensor, gen: torch.Generator | None
) -> Tensor:
    return bernoulli_mask(shape, 1 - p, like, gen).div_(1 - p)


def draw_masks(
    options: CellOptions,
    v: Variant,
    N: int,
    R: int,
    hidden_size: int,
    like: Tensor,
    training: bool,
    generator: torch.Generator | None = None,
) -> LayerMasks:
    """Masks for one layer-direction: ``N`` sequences, ``R`` packed rows, dtype/device of ``like``.

    Draws nothing for an option that is off, and in evaluation only zoneout's constant
    expectation (a ``(H,)`` vector of ``p``).
    """
    H = hidden_size
    if not training:
        zone = torch.full((H,), options.zoneout, dtype=like.dtype, device=like.device)
        return LayerMasks(zoneout=zone if options.zoneout else None)
    rec = cand = zone = weight = None
    if options.recurrent_dropout:
        rec = _dropout_mask((N, H), options.recurrent_dropout, like, generator)
    if options.candidate_dropout:
        cand = _dropout_mask((R, H), options.candidate_dropout, like, generator)
    if options.zoneout:
        zone = bernoulli_mask((R, H), options.zoneout, like, generator)
    if options.weight_drop:
        weight = _dropout_mask((len(v.h_blocks) * H, H), options.weight_drop, like, generator)
    return LayerMasks(rec, cand, zone, weight)


#: The option each mask belongs to.
MASK_OPTIONS = {"recurrent": "recurrent_dropout", "candidate": "candidate_dropout",
                "zoneout": "zoneout", "weight": "weight_drop"}  # fmt: skip


def check_masks(owner: str, masks: object, options: CellOptions, N: int, R: int, H: int,
                whh: Tensor | None, like: Tensor, index: int) -> None:  # fmt: skip
    """User-given masks for layer-direction ``index``: a :class:`LayerMasks` holding masks only
    for options that are on, of the right shapes, dtype and device."""
    if not isinstance(masks, LayerMasks):
        raise TypeError(
            f"{owner}: masks[{index}] must be a grukit.LayerMasks, got {type(masks).__name__}"
        )
    expected = {
        "recurrent": [(N, H)],
        "candidate": [(R, H)],
        "zoneout": [(R, H), (H,)],
        "weight": [tuple(whh.shape)] if whh is not None else [],
    }
    for name, t in zip(LayerMasks._fields, masks, strict=True):
        if t is None:
            continue
        option = MASK_OPTIONS[name]
        if not getattr(options, option):
            raise ValueError(
                f"{owner}: masks[{index}].{name} was given but {option} is off; "
                f"build the module with {option} > 0"
            )
        if not isinstance(t, Tensor) or tuple(t.shape) not in expected[name]:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            want = " or ".join(str(s) for s in expected[name]) or "none (no weight_hh)"
            raise ValueError(f"{owner}: masks[{index}].{name} must have shape {want}, got {got}")
        if t.dtype != like.dtype or t.device != like.device:
            raise ValueError(
                f"{owner}: masks[{index}].{name} must be {like.dtype} on {like.device} like the "
                f"parameters, got {t.dtype} on {t.device}"
            )
