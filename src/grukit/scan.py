"""minGRU over a whole sequence at once: a parallel scan in log space (Feng et al. 2024, sec. 3).

minGRU's state is a linear recurrence ``h_t = a_t * h_{t-1} + b_t`` with ``a_t = 1 - z_t`` in
(0, 1) and ``b_t = z_t * g(.) > 0``, so it can be computed without a loop over time:
``h_t = A_t h_0 + sum_{k<=t} (A_t / A_k) b_k`` with ``A_t = a_1 ... a_t``. The sum is evaluated in
log space with ``logcumsumexp`` (Heinsen 2023), which keeps products of many gates from
underflowing. Two refinements over the paper's ``parallel_scan_log``:

- the ``h_0`` term ``A_t h_0`` is added separately, so ``h_0`` may be any real (the paper feeds
  ``log g(h_0)``, which forces a positive state);
- the scan runs in chunks of ``chunk`` steps and carries the state between chunks, so
  ``|log A|`` only grows within a chunk;
- the log-space arithmetic runs in float64 whatever the input dtype: ``exp(log A + ...)`` loses
  about ``|log A| * eps`` relative precision, and saturated gates add tens to ``|log A|`` per
  step (in float32 the gradients were off by 1e-5 to 1e-2 of their scale).

Runs on any device; differentiated by autograd.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from grukit.cell_options import CellExtras
from grukit.reference import LayerWeights, input_projection
from grukit.variants import Variant

__all__ = ["linear_scan_log", "mingru_scan_layer", "packed_time_index"]

# log of a zero coefficient: finite so that logcumsumexp's gradient stays finite (exp(-1e30) = 0)
_LOG_ZERO = -1e30


def linear_scan_log(log_a: Tensor, log_b: Tensor, h0: Tensor, chunk: int = 64) -> Tensor:
    """Solve ``h_t = a_t h_{t-1} + b_t`` for all ``t`` from log-coefficients.

    log_a, log_b: ``(T, N, H)``, ``log a_t <= 0``; h0: ``(N, H)``. Returns ``h``: ``(T, N, H)``.
    """
    T = log_a.shape[0]
    pad = (-T) % chunk
    if pad:  # padded steps keep the state: a = 1, b = 0
        log_a = F.pad(log_a, (0, 0, 0, 0, 0, pad), value=0.0)
        log_b = F.pad(log_b, (0, 0, 0, 0, 0, pad), value=_LOG_ZERO)
    K = log_a.shape[0] // chunk
    log_a = log_a.reshape(K, chunk, *log_a.shape[1:])
    log_b = log_b.reshape(K, chunk, *log_b.shape[1:])
    log_A = torch.cumsum(log_a, dim=1)  # log of a_1..a_t within each chunk
    # the state each chunk reaches from a zero start, then the carried-in state decayed by A
    h_zero_start = torch.exp(log_A + torch.logcumsumexp(log_b - log_A, dim=1))
    decay = torch.exp(log_A)
    out = []
    h = h0
    for k in range(K):
        hk = h_zero_start[k] + decay[k] * h
        out.append(hk)
        h = hk[-1]
    return torch.cat(out, 0)[:T]


def packed_time_index(batch_sizes: Sequence[int], reverse: bool) -> tuple[Tensor, Tensor]:
    """Map packed rows to a padded ``(T, N)`` grid in processing order.

    Returns ``(row, valid)``: ``row[p, b]`` is the packed row of the ``p``-th step that sequence
    ``b`` processes (its step ``p``, or ``L_b - 1 - p`` when ``reverse``), ``valid[p, b]`` whether
    ``p < L_b``. Invalid cells point at row 0 and are masked by the caller.
    """
    bs = torch.as_tensor(list(batch_sizes), dtype=torch.long)
    T, N = len(bs), int(bs[0])
    offsets = torch.cumsum(bs, 0) - bs
    lengths = (bs.unsqueeze(1) > torch.arange(N)).sum(0)  # (N,)
    p = torch.arange(T).unsqueeze(1)  # (T, 1)
    valid = p < lengths.unsqueeze(0)
    t = (lengths.unsqueeze(0) - 1 - p) if reverse else p.expand(T, N)
    t = t.clamp(min=0)
    row = torch.where(valid, offsets[t] + torch.arange(N), torch.zeros((), dtype=torch.long))
    return row, valid


def mingru_scan_layer(
    v: Variant,
    data: Tensor,
    batch_sizes: Sequence[int],
    h0: Tensor,
    w: LayerWeights,
    reverse: bool = False,
    extras: CellExtras | None = None,
    chunk: int = 64,
) -> tuple[Tensor, Tensor]:
    """minGRU layer by the parallel scan (contract of :func:`grukit.reference.reference_layer`).

    The in-cell options fold into the recurrence's coefficients: layer norm acts on the input
    projection; candidate dropout scales ``b_t``; zoneout's keep share ``m_t`` makes the written
    share ``(1 - m_t) z_t``, so ``a_t = 1 - (1 - m_t) z_t`` and ``b_t = (1 - m_t) z_t n_t``.
    """
    if v.family != "mingru":
        raise ValueError(f"the parallel scan runs minGRU only, not {v.name!r}")
    e = extras if extras is not None else CellExtras()
    if e.recurrent is not None or e.ln_hh is not None:
        raise ValueError("minGRU has no recurrent matmul: no recurrent mask or gain applies")
    # log-space arithmetic in float64: exp(log A + ...) loses about |log A| * eps relative
    # precision, and saturated gates make |log A| grow by tens per step
    compute_dtype = torch.float64
    H = h0.shape[-1]
    gx = input_projection(data, w, e.ln_ih, H).to(compute_dtype)
    step_masks = [m for m in (e.candidate, e.zoneout) if m is not None and m.dim() == 2]
    if step_masks:  # per-row masks travel with the rows: [gx | candidate | zoneout]
        gx = torch.cat([gx, *(m.to(compute_dtype) for m in step_masks)], 1)
    T, N = len(batch_sizes), int(batch_sizes[0])
    uniform = all(int(n) == N for n in batch_sizes)
    if uniform:  # the packed rows already form the (T, N) grid
        k = gx.view(T, N, gx.shape[1])
        k = k.flip(0) if reverse else k
    else:
        row, valid = packed_time_index(batch_sizes, reverse)
        row, valid = row.to(data.device), valid.to(data.device).unsqueeze(-1)
        k = gx[row]  # (T, N, columns)
    kz, kn = k[..., :H], k[..., H : 2 * H]
    col, cand, zone = 2 * H, None, e.zoneout
    if e.candidate is not None:
        cand, col = k[..., col : col + H], col + H
    if zone is not None:
        zone = k[..., col : col + H] if zone.dim() == 2 else zone.to(compute_dtype)
    log_a = -F.softplus(kz)  # log(1 - z)
    log_n = torch.where(kn >= 0, torch.log(F.relu(kn) + 0.5), -F.softplus(-kn))  # log g(kn)
    log_b = -F.softplus(-kz) + log_n  # log(z * g(kn))
    if cand is not None:  # n~ = m n: log b += log m (m = 0 gives b = 0)
        log_b = torch.where(cand > 0, log_b + torch.log(cand.clamp(min=1e-300)), _LOG_ZERO)
    if zone is not None:  # written share (1 - m) z
        keep_z = (1 - zone) * torch.sigmoid(kz)
        log_a = torch.where(zone > 0, torch.log1p(-keep_z), log_a)
        log_b = torch.where(zone < 1, log_b + torch.log((1 - zone).clamp(min=1e-300)), _LOG_ZERO)
    if not uniform:  # past a sequence's end: a = 1, b = 0 keep its state
        log_a = torch.where(valid, log_a, 0.0)
        log_b = torch.where(valid, log_b, _LOG_ZERO)
    h = linear_scan_log(log_a, log_b, h0.to(compute_dtype), chunk)  # (T, N, H)
    if uniform:
        out = (h.flip(0) if reverse else h).reshape(T * N, H)
    else:
        flat_valid = valid.squeeze(-1)
        rows = row[flat_valid]  # a permutation of the packed rows
        inverse = torch.empty_like(rows)
        inverse[rows] = torch.arange(rows.numel(), device=rows.device)
        out = h[flat_valid][inverse]
    return out.to(data.dtype), h[-1].to(data.dtype)
