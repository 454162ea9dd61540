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

import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from grukit.cell_options import LAYER_NORM_EPS, CellExtras
from grukit.variants import Variant

__all__ = [
    "LayerWeights",
    "block_layer_norm",
    "cell_step",
    "expanded_weights",
    "g",
    "input_projection",
    "reference_layer",
]


class LayerWeights(NamedTuple):
    """The parameters of one layer in one direction (shapes: :meth:`Variant.parameter_shapes`)."""

    weight_ih: Tensor
    weight_hh: Tensor | None
    bias_ih: Tensor | None
    bias_hh: Tensor | None


_EXPANDED_WEIGHTS_MODULE = "torch.nn.utils._expanded_weights.expanded_weights_impl"


def expanded_weights(tensors: Sequence[Tensor | None]) -> list[Tensor]:
    """The tensors among ``tensors`` that are torch's ``ExpandedWeight`` (the parameters
    ``torch.nn.utils._per_sample_grad.call_for_per_sample_grads`` hands a module), which accept
    only a few functions, here ``F.linear`` with the batch as the input's first dimension.

    Costs nothing when torch's module was never imported (then no such tensor exists).
    """
    impl = sys.modules.get(_EXPANDED_WEIGHTS_MODULE)
    if impl is None:
        return []
    return [t for t in tensors if isinstance(t, impl.ExpandedWeight)]


def _is_expanded(t: Tensor | None) -> bool:
    impl = sys.modules.get(_EXPANDED_WEIGHTS_MODULE)
    return impl is not None and isinstance(t, impl.ExpandedWeight)


def g(a: Tensor) -> Tensor:
    """minGRU's positive activation (Feng et al. 2024, log-space version): a + 1/2 or sigma(a)."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def block_layer_norm(u: Tensor, gain: Tensor, H: int) -> Tensor:
    """Layer normalisation of each ``H``-wide block of ``u`` ``(rows, K*H)``, times ``gain``
    ``(K*H,)``: ``gain_k * (u_k - mean(u_k)) / sqrt(var(u_k) + eps)`` (biased variance)."""
    K = gain.numel() // H
    normed = F.layer_norm(u.unflatten(-1, (K, H)), (H,), eps=LAYER_NORM_EPS)
    return (normed * gain.view(K, H)).flatten(-2)


def _recurrent_term(
    h: Tensor, weight: Tensor, bias: Tensor | None, gain: Tensor | None, H: int
) -> Tensor:
    """``U h + b``, or ``LN(U h) * gain + b`` with layer normalisation."""
    if gain is None:
        return F.linear(h, weight, bias)
    u = block_layer_norm(F.linear(h, weight), gain, H)
    return u if bias is None else u + bias


def input_projection(data: Tensor, w: LayerWeights, ln_ih: Tensor | None, H: int) -> Tensor:
    """``x W_ih^T + b_ih`` of every row, ``(R, Gx*H)``; with layer norm ``LN(x W_ih^T) + b_ih``."""
    return _recurrent_term(data, w.weight_ih, w.bias_ih, ln_ih, H)


def _gate_preactivation(
    v: Variant,
    gx: Tensor,
    h: Tensor,
    weight_hh: Tensor | None,
    bias_hh: Tensor | None,
    ln_hh: Tensor | None,
) -> Tensor:
    """Pre-activations of the gates of a reset-before variant: ``(N, G*H)``, ``G`` gates.

    Every gate of a variant has the same sources (see :mod:`grukit.variants`); gates come first
    in each parameter, so their rows are the leading ``G*H`` of ``weight_ih``/``weight_hh`` and
    their biases the leading ``G*H`` of ``bias_ih``/``bias_hh``.
    """
    gate = v.gates[0]
    H = h.shape[-1]
    width = len(v.gates) * H
    pre = gx[:, :width] if gate.x else None
    in_bias_hh = bias_hh is not None and gate.bias and (gate.h or not gate.x)
    if gate.h and ln_hh is None and _is_expanded(weight_hh):  # per-sample grads: whole weights
        hpart = F.linear(h, weight_hh, bias_hh if in_bias_hh else None)[:, :width]
        return hpart if pre is None else pre + hpart
    b = bias_hh[:width] if in_bias_hh else None
    if gate.h:
        assert weight_hh is not None
        gain = None if ln_hh is None else ln_hh[:width]
        hpart = _recurrent_term(h, weight_hh[:width], b, gain, H)
    elif b is not None:
        hpart = b.expand(h.shape[0], width)
    else:  # gates read only x (never the case for a reset-before variant today)
        assert pre is not None
        return pre
    return hpart if pre is None else pre + hpart


def cell_step(
    v: Variant,
    gx: Tensor,
    h: Tensor,
    weight_hh: Tensor | None,
    bias_hh: Tensor | None,
    extras: CellExtras | None = None,
) -> Tensor:
    """One time step of variant ``v``, with the in-cell options of :mod:`grukit.cell_options`.

    gx: ``(N, Gx*H)``, the input projection of this step (:func:`input_projection`).
    h: ``(N, H)``, the state. extras: this step's rows of the masks (``(N, H)`` each; zoneout
    may be ``(H,)``) and the recurrent layer-norm gains. Returns ``h'``: ``(N, H)``. The
    equations are in ``v.equations``.
    """
    H = h.shape[-1]
    e = extras if extras is not None else CellExtras()
    hd = h if e.recurrent is None else h * e.recurrent  # the state the recurrent matmuls read
    if v.family == "mingru":
        z = torch.sigmoid(gx[:, :H])  # the written share
        n = g(gx[:, H:])
    elif v.reset == "after":  # gru: the torch.nn.GRU cell
        gh = _recurrent_term(hd, weight_hh, bias_hh, e.ln_hh, H)
        rz = torch.sigmoid(gx[:, : 2 * H] + gh[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
    else:
        gates = torch.sigmoid(_gate_preactivation(v, gx, hd, weight_hh, bias_hh, e.ln_hh))
        r = gates[:, :H]  # the reset gate: r (GRU family) or the forget gate f (MGU family)
        assert weight_hh is not None
        if e.ln_hh is None and _is_expanded(weight_hh):  # per-sample grads: whole weights
            n = torch.tanh(gx[:, -H:] + F.linear(r * hd, weight_hh, bias_hh)[:, -H:])
        else:
            b_n = None if bias_hh is None else bias_hh[-H:]
            gain = None if e.ln_hh is None else e.ln_hh[-H:]
            n = torch.tanh(gx[:, -H:] + _recurrent_term(r * hd, weight_hh[-H:], b_n, gain, H))
        z = r if v.family == "mgu" else gates[:, H:]  # MGU: f writes; GRU: z keeps
    if e.candidate is not None:
        n = n * e.candidate  # candidate dropout: the update writes m n
    # gru: (1 - z) n + z h (z keeps); minGRU: (1 - z) h + z n, MGU: (1 - f) h + f n (they write)
    h_new = n + z * (h - n) if v.family == "gru" else h + z * (n - h)
    if e.zoneout is None:
        return h_new
    return h_new + e.zoneout * (h - h_new)  # zoneout: m h + (1 - m) h_new


def reference_layer(
    v: Variant,
    data: Tensor,
    batch_sizes: Sequence[int],
    h0: Tensor,
    w: LayerWeights,
    reverse: bool = False,
    extras: CellExtras | None = None,
    *,
    cell: Callable[..., Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Run one layer in one direction over packed sequences.

    data: ``(R, H_in)`` packed rows, ``R = sum(batch_sizes)``; h0: ``(N, H)``, ``N =
    batch_sizes[0]``. extras: masks and layer-norm gains (:class:`CellExtras`): recurrent
    ``(N, H)``, candidate and zoneout ``(R, H)`` (zoneout may be ``(H,)``). Returns ``(output
    (R, H), h_n (N, H))``; ``h_n[b]`` is the state after the last step of sequence ``b`` (its
    first step when ``reverse``). cell: the step function, :func:`cell_step` or a compiled
    version of it (:mod:`grukit.compiled`).
    """
    cell = cell_step if cell is None else cell
    e = extras if extras is not None else CellExtras()
    H = h0.shape[-1]
    expanded = expanded_weights(w)
    # torch's per-sample gradients read the batch from the first dimension of a linear's input:
    # with ExpandedWeight parameters, project each step's rows on their own, not all R at once
    gx_all = None if expanded else input_projection(data, w, e.ln_ih, H)
    offsets = [0]
    for n in batch_sizes:
        offsets.append(offsets[-1] + n)
    outputs: list[Tensor] = [data.new_empty(0)] * len(batch_sizes)

    def rows(mask: Tensor | None, t: int) -> Tensor | None:
        if mask is None or mask.dim() == 1:
            return mask
        return mask[offsets[t] : offsets[t + 1]]

    def step(t: int, h: Tensor) -> Tensor:
        if gx_all is None:
            gx = input_projection(data[offsets[t] : offsets[t + 1]], w, e.ln_ih, H)
        else:
            gx = gx_all[offsets[t] : offsets[t + 1]]
        if extras is None:
            return cell(v, gx, h, w.weight_hh, w.bias_hh)
        n = h.shape[0]
        at_t = CellExtras(
            None if e.recurrent is None else e.recurrent[:n],
            rows(e.candidate, t), rows(e.zoneout, t), None, e.ln_hh,
        )  # fmt: skip
        return cell(v, gx, h, w.weight_hh, w.bias_hh, at_t)

    for ew in expanded:  # packed steps have fewer rows than the batch (rows 0 .. n - 1)
        ew.set_allow_smaller_batches(True)  # type: ignore[attr-defined]
    try:
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
    finally:
        for ew in expanded:
            ew.set_allow_smaller_batches(False)  # type: ignore[attr-defined]
    return torch.cat(outputs, 0), h_n
