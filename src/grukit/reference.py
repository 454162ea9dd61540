"""Pure-PyTorch reference: each variant's step and the sequence loop, differentiated by autograd.

This is the definition the fused kernel is tested against, written for clarity rather than speed
(the input projection of all steps is still hoisted into one matmul, as in haste's ``GRUScript``).
It runs on any device and dtype.

Sequences use the *packed* time-major layout of :class:`torch.nn.utils.rnn.PackedSequence`:
``data`` holds the rows of step 0, then those of step 1, ...; step ``t`` has ``batch_sizes[t]``
rows, non-increasing in ``t``, so the sequences still running at step ``t`` are rows
``0 .. batch_sizes[t] - 1`` of the batch. A padded ``(T, N, H_in)`` batch is the special case
``batch_sizes = [N] * T``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from grukit.variants import Variant

__all__ = ["LayerWeights", "cell_step", "g", "reference_layer"]


class LayerWeights(NamedTuple):
    """The parameters of one layer in one direction (shapes: :meth:`Variant.parameter_shapes`)."""

    weight_ih: Tensor
    weight_hh: Tensor | None
    bias_ih: Tensor | None
    bias_hh: Tensor | None


def g(a: Tensor) -> Tensor:
    """minGRU's positive activation (Feng et al. 2024, log-space version): a + 1/2 or sigma(a)."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def _gate_preactivation(
    v: Variant, gx: Tensor, h: Tensor, weight_hh: Tensor | None, bias_hh: Tensor | None
) -> Tensor:
    """Pre-activations of the gates of a reset-before variant: ``(N, G*H)``, ``G`` gates.

    Every gate of a variant has the same sources (see :mod:`grukit.variants`); gates come first
    in each parameter, so their rows are the leading ``G*H`` of ``weight_ih``/``weight_hh`` and
    their biases the leading ``G*H`` of ``bias_ih``/``bias_hh``.
    """
    gate = v.gates[0]
    width = len(v.gates) * h.shape[-1]
    pre = gx[:, :width] if gate.x else None
    in_bias_hh = bias_hh is not None and gate.bias and (gate.h or not gate.x)
    b = bias_hh[:width] if in_bias_hh else None
    if gate.h:
        assert weight_hh is not None
        hpart = F.linear(h, weight_hh[:width], b)
    elif b is not None:
        hpart = b.expand(h.shape[0], width)
    else:  # gates read only x (never the case for a reset-before variant today)
        assert pre is not None
        return pre
    return hpart if pre is None else pre + hpart


def cell_step(
    v: Variant, gx: Tensor, h: Tensor, weight_hh: Tensor | None, bias_hh: Tensor | None
) -> Tensor:
    """One time step of variant ``v``.

    gx: ``(N, Gx*H)``, the input projection ``x W_ih^T + b_ih`` of this step (``Gx`` blocks read x).
    h: ``(N, H)``, the state. Returns ``h'``: ``(N, H)``. The equations are in ``v.equations``.
    """
    H = h.shape[-1]
    if v.family == "mingru":
        z = torch.sigmoid(gx[:, :H])
        n = g(gx[:, H:])
        return h + z * (n - h)  # (1 - z) h + z n
    if v.reset == "after":  # gru: the torch.nn.GRU cell
        gh = F.linear(h, weight_hh, bias_hh)
        rz = torch.sigmoid(gx[:, : 2 * H] + gh[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
        return n + z * (h - n)  # (1 - z) n + z h
    gates = torch.sigmoid(_gate_preactivation(v, gx, h, weight_hh, bias_hh))
    r = gates[:, :H]  # the reset gate: r (GRU family) or the forget gate f (MGU family)
    assert weight_hh is not None
    n = torch.tanh(
        gx[:, -H:] + F.linear(r * h, weight_hh[-H:], None if bias_hh is None else bias_hh[-H:])
    )
    if v.family == "mgu":
        return h + r * (n - h)  # (1 - f) h + f n
    z = gates[:, H:]
    return n + z * (h - n)  # (1 - z) n + z h


def reference_layer(
    v: Variant,
    data: Tensor,
    batch_sizes: Sequence[int],
    h0: Tensor,
    w: LayerWeights,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run one layer in one direction over packed sequences.

    data: ``(R, H_in)`` packed rows, ``R = sum(batch_sizes)``; h0: ``(N, H)``, ``N =
    batch_sizes[0]``. Returns ``(output (R, H), h_n (N, H))``; ``h_n[b]`` is the state after the
    last step of sequence ``b`` (its first step when ``reverse``).
    """
    gx_all = F.linear(data, w.weight_ih, w.bias_ih)
    offsets = [0]
    for n in batch_sizes:
        offsets.append(offsets[-1] + n)
    outputs: list[Tensor] = [data.new_empty(0)] * len(batch_sizes)

    def step(t: int, h: Tensor) -> Tensor:
        gx = gx_all[offsets[t] : offsets[t + 1]]
        return cell_step(v, gx, h, w.weight_hh, w.bias_hh)

    if not reverse:
        h = h0
        finished: list[Tensor] = []  # states of sequences that ended, longest last
        for t, n in enumerate(batch_sizes):
            if n < h.shape[0]:
                finished.append(h[n:])
                h = h[:n]
            h = step(t, h)
            outputs[t] = h
        h_n = torch.cat([h, *reversed(finished)], 0)
    else:
        h = h0[: batch_sizes[-1]]
        for t in reversed(range(len(batch_sizes))):
            n = batch_sizes[t]
            if n > h.shape[0]:  # sequences of length t + 1 start here, from their h0
                h = torch.cat([h, h0[h.shape[0] : n]], 0)
            h = step(t, h)
            outputs[t] = h
        h_n = h
    return torch.cat(outputs, 0), h_n
