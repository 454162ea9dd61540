"""The in-cell options of grukit.GRU / GRUCell (grukit/cell_options.py): recurrent_dropout,
candidate_dropout, zoneout, layer_norm and weight_drop.

Defaults give the plain cell exactly; evaluation is deterministic; the masks have the
documented shapes, values and sharing; the reference computes the documented math (against
hand-written equations); the minGRU scan and the fused kernel agree with the reference given the
same masks (float64, 1e-10, outputs and every gradient); errors are clear.

Everything runs in float64 on tiny sizes. The fused-with-options tests are skipped until the
kernel accepts the options (``needs_fused_options``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import grukit
import grukit.fused
from grukit import LayerMasks
from grukit.cell_options import CellExtras
from grukit.reference import block_layer_norm, cell_step, input_projection, reference_layer
from grukit.variants import VARIANTS

DT = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-10}
VARIANT_NAMES = list(VARIANTS)
OPTION_NAMES = ("recurrent_dropout", "candidate_dropout", "zoneout", "layer_norm", "weight_drop")
PROBABILITIES = ("recurrent_dropout", "candidate_dropout", "zoneout", "weight_drop")
ON = {
    "recurrent_dropout": 0.3,
    "candidate_dropout": 0.4,
    "zoneout": 0.35,
    "layer_norm": True,
    "weight_drop": 0.25,
}
OFF = {
    "recurrent_dropout": 0.0,
    "candidate_dropout": 0.0,
    "zoneout": 0.0,
    "layer_norm": False,
    "weight_drop": 0.0,
}
NOT_FOR_MINGRU = ("recurrent_dropout", "weight_drop")  # they act on the recurrent matmul


def allowed(name: str, options=OPTION_NAMES) -> dict:
    """``ON`` values of ``options``, less those that ``name`` does not accept."""
    return {k: ON[k] for k in options if not (name == "mingru" and k in NOT_FOR_MINGRU)}


def _fused_supports_options() -> bool:
    """The fused kernel is built and runs a tiny GRU with an in-cell option, forward and
    backward, in training mode."""
    try:
        if not grukit.fused.available():
            return False
        m = grukit.GRU(2, 3, zoneout=0.5, backend="fused")
        m.train()
        out, hn = m(torch.randn(4, 2, 2))
        (out.sum() + hn.sum()).backward()
        return m.last_backend == "fused"
    except Exception:
        return False


FUSED_OK = grukit.fused.available()  # builds the kernels once, at collection
needs_fused = pytest.mark.skipif(
    not FUSED_OK, reason=f"fused kernels unavailable: {grukit.fused.unavailable_reason()}"
)
needs_fused_options = pytest.mark.skipif(
    not _fused_supports_options(),
    reason="the fused kernel does not run the in-cell options (yet)",
)


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread. With two, every small op (layer_norm above all)
    forks OpenMP threads, which on a loaded 2-core machine costs milliseconds per call. The
    thread-count test sets its own counts."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomise_gains(module: nn.Module, seed: int = 11) -> None:
    """Layer-norm gains away from their initial 1, so that a gain left out shows."""
    g = gen(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def make(name="gru", Hin=3, H=4, layers=1, bidir=False, backend="reference", seed=0,
         batch_first=False, dtype=DT, **options):  # fmt: skip
    torch.manual_seed(seed)
    m = grukit.GRU(Hin, H, layers, bidirectional=bidir, batch_first=batch_first, variant=name,
                   backend=backend, dtype=dtype, **options)  # fmt: skip
    randomise_gains(m, seed + 100)
    return m


def pair(name, backends=("fused", "reference"), **kw):
    """Modules of the same variant and options on two backends, with the same weights."""
    a = make(name, backend=backends[0], **kw)
    b = make(name, backend=backends[1], **kw)
    b.load_state_dict(a.state_dict())
    return a, b


def inputs(T, N, Hin, H, layers=1, D=1, batch_first=False, seed=1):
    g = gen(seed)
    shape = (N, T, Hin) if batch_first else (T, N, Hin)
    x = torch.randn(shape, generator=g, dtype=DT)
    h0 = torch.randn(layers * D, N, H, generator=g, dtype=DT)
    return x, h0


def as_input(module, x, lengths=None):
    if lengths is None:
        return x
    return pack_padded_sequence(x, lengths, batch_first=module.batch_first, enforce_sorted=False)


def masks_for(module, x, lengths=None, seed=123):
    """The masks ``module`` would draw on ``x`` (packed with ``lengths``), from a seeded
    generator; follows ``module.training``."""
    return module.draw_masks(as_input(module, x, lengths), gen(seed))


def run(module, x, h0=None, lengths=None, masks=None):
    """Forward, then the gradients of a random linear loss: a dict of tensors by name."""
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    kw = {} if masks is None else {"masks": masks}  # torch.nn.GRU takes no masks
    out, hn = module(as_input(module, x, lengths), h0, **kw)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=module.batch_first)
    loss = (out * _weights_like(out, 1)).sum() + (hn * _weights_like(hn, 2)).sum()
    wrt = {"input": x, **({} if h0 is None else {"h0": h0}), **dict(module.named_parameters())}
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    res = {"out": out.detach(), "hn": hn.detach()}
    for k, g in zip(wrt, grads, strict=True):
        res["grad " + k] = torch.zeros_like(wrt[k]) if g is None else g
    return res


def assert_close_all(got, expected, what="", **tol):
    tol = tol or TOL
    assert got.keys() == expected.keys(), (sorted(got), sorted(expected))
    for k in got:
        torch.testing.assert_close(
            got[k], expected[k], **tol, msg=lambda m, k=k: f"{what} {k}: {m}"
        )


def assert_equal_all(got, expected, what=""):
    assert got.keys() == expected.keys(), (sorted(got), sorted(expected))
    for k in got:
        assert torch.equal(got[k], expected[k]), (
            f"{what} {k}: not bit-identical (max abs diff "
            f"{(got[k] - expected[k]).abs().max().item():.3g})"
        )


def manual_loop(module, x, h0, masks, layer_norm=False):
    """One layer, one direction, padded ``x`` ``(T, N, H_in)``: the module's own weights, a loop
    over steps of ``reference.cell_step``, the step's rows of every mask."""
    v = VARIANTS[module.variant]
    T, N, _ = x.shape
    H = module.hidden_size
    w = module.layer_weights(0)
    ln_ih, ln_hh = module.layer_norm_gains(0) if layer_norm else (None, None)
    m = masks[0]
    whh = w.weight_hh if m.weight is None else w.weight_hh * m.weight
    gx = input_projection(x.reshape(T * N, -1), w, ln_ih, H).view(T, N, -1)

    def rows(mask, t):
        if mask is None or mask.dim() == 1:
            return mask
        return mask.view(T, N, H)[t]

    h, outs = h0[0], []
    for t in range(T):
        e = CellExtras(m.recurrent, rows(m.candidate, t), rows(m.zoneout, t), None, ln_hh)
        h = cell_step(v, gx[t], h, whh, w.bias_hh, e)
        outs.append(h)
    return torch.stack(outs), h


# -- 1. the defaults are torch.nn.GRU ----------------------------------------------------------


@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
def test_defaults_have_exactly_torchs_parameters(layers, bidir):
    ours = grukit.GRU(3, 4, layers, bidirectional=bidir, backend="reference", **OFF)
    theirs = nn.GRU(3, 4, layers, bidirectional=bidir)
    assert [(k, p.shape) for k, p in ours.named_parameters()] == [
        (k, p.shape) for k, p in theirs.named_parameters()
    ]
    assert not ours.cell_options.any
    cell = grukit.GRUCell(3, 4, backend="reference", **OFF)
    assert [(k, p.shape) for k, p in cell.named_parameters()] == [
        (k, p.shape) for k, p in nn.GRUCell(3, 4).named_parameters()
    ]


@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
def test_layer_norm_draws_the_same_initial_weights_as_torch(layers, bidir):
    """The gains start at 1 and take no random numbers: every other parameter is torch's."""
    torch.manual_seed(3)
    theirs = nn.GRU(3, 4, layers, bidirectional=bidir)
    torch.manual_seed(3)
    ours = grukit.GRU(3, 4, layers, bidirectional=bidir, backend="reference", layer_norm=True)
    mine = dict(ours.named_parameters())
    for k, p in theirs.named_parameters():
        assert torch.equal(mine[k], p), k


@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_fused)])
@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_options_at_zero_are_bit_identical_to_the_plain_module(name, backend, packed):
    kw = {"Hin": 3, "H": 4, "layers": 2, "bidir": True, "backend": backend}
    plain = make(name, **kw)
    zero = make(name, **kw, **OFF)
    zero.load_state_dict(plain.state_dict())
    assert [k for k, _ in zero.named_parameters()] == [k for k, _ in plain.named_parameters()]
    x, h0 = inputs(5, 3, 3, 4, 2, 2)
    lengths = [5, 2, 4] if packed else None
    state = torch.get_rng_state()
    got = run(zero, x, h0, lengths)  # training mode
    assert torch.equal(torch.get_rng_state(), state), "options at 0 drew random numbers"
    assert_equal_all(got, run(plain, x, h0, lengths), name)
    assert zero.last_backend == backend
    if name == "gru":  # and both are torch.nn.GRU
        theirs = nn.GRU(3, 4, 2, bidirectional=True, dtype=DT)
        theirs.load_state_dict(plain.state_dict())
        assert_close_all(got, run(theirs, x, h0, lengths), "torch")


def test_options_at_zero_scan_is_bit_identical_to_the_plain_module():
    plain = make("mingru", backend="scan", layers=2, bidir=True)
    zero = make("mingru", backend="scan", layers=2, bidir=True, **OFF)
    zero.load_state_dict(plain.state_dict())
    x, h0 = inputs(5, 3, 3, 4, 2, 2)
    for lengths in (None, [5, 2, 4]):
        assert_equal_all(run(zero, x, h0, lengths), run(plain, x, h0, lengths), "scan")


@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_fused)])
@pytest.mark.parametrize("name", ["gru", "gru_reset_before", "mgu", "mingru"])
def test_cell_options_at_zero_are_bit_identical(name, backend):
    torch.manual_seed(0)
    plain = grukit.GRUCell(3, 4, variant=name, backend=backend, dtype=DT)
    zero = grukit.GRUCell(3, 4, variant=name, backend=backend, dtype=DT, **OFF)
    zero.load_state_dict(plain.state_dict())
    x, h = torch.randn(5, 3, dtype=DT), torch.randn(5, 4, dtype=DT)
    res = []
    for m in (zero, plain):
        leaves = [x.clone().requires_grad_(), h.clone().requires_grad_()]
        out = m(*leaves)
        gs = torch.autograd.grad((out * _weights_like(out, 7)).sum(), [*leaves, *m.parameters()])
        res.append((out, *gs))
    for a, b in zip(*res, strict=True):
        assert torch.equal(a, b)
    if name == "gru":
        theirs = nn.GRUCell(3, 4, dtype=DT)
        theirs.load_state_dict(plain.state_dict())
        torch.testing.assert_close(res[0][0], theirs(x, h), **TOL)


def test_options_on_draw_random_numbers_in_training():
    """The converse of the RNG check above, so that it can fail."""
    m = make("gru", zoneout=0.3)
    x, h0 = inputs(4, 3, 3, 4)
    state = torch.get_rng_state()
    m(x, h0)
    assert not torch.equal(torch.get_rng_state(), state)


# -- 2. evaluation -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_eval_is_deterministic_and_dropouts_vanish(name):
    kw = {"Hin": 3, "H": 4, "layers": 2, "bidir": True}
    full = make(name, **kw, **allowed(name))
    x, h0 = inputs(5, 3, 3, 4, 2, 2)
    full.eval()
    state = torch.get_rng_state()
    first = run(full, x, h0, [5, 2, 4])
    assert torch.equal(torch.get_rng_state(), state), "evaluation drew random numbers"
    assert_equal_all(run(full, x, h0, [5, 2, 4]), first, "two eval calls")
    # the dropouts have no effect in evaluation: equal to the module without them
    for norm in (False, True):
        dropouts = allowed(name, ("recurrent_dropout", "candidate_dropout", "weight_drop"))
        a = make(name, **kw, layer_norm=norm, **dropouts)
        b = make(name, **kw, layer_norm=norm)
        b.load_state_dict(a.state_dict())
        a.eval(), b.eval()
        for lengths in (None, [5, 2, 4]):
            assert_equal_all(run(a, x, h0, lengths), run(b, x, h0, lengths), f"norm={norm}")
        a.train()  # ... and they act in training
        assert not torch.equal(a(x, h0)[0], b(x, h0)[0])


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("p", [0.25, 0.7])
def test_zoneout_in_eval_is_the_expectation(name, p):
    """h' = p h + (1 - p) h_new, with h_new the plain step (reference.cell_step, no extras)."""
    m = make(name, H=4, zoneout=p).eval()
    T, N, Hin, H = 5, 3, 3, 4
    x, h0 = inputs(T, N, Hin, H)
    out, hn = m(x, h0)
    v, w = VARIANTS[name], m.layer_weights(0)
    gx = input_projection(x.reshape(T * N, Hin), w, None, H).view(T, N, -1)
    h, outs = h0[0], []
    for t in range(T):
        h_new = cell_step(v, gx[t], h, w.weight_hh, w.bias_hh)
        h = p * h + (1 - p) * h_new
        outs.append(h)
    torch.testing.assert_close(out, torch.stack(outs), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(hn[0], h, atol=1e-12, rtol=1e-12)
    plain = make(name, H=4).eval()
    plain.load_state_dict(m.state_dict())
    assert (plain(x, h0)[0] - out).abs().max() > 1e-3, "zoneout had no effect in eval"
    # the mask that evaluation uses: (H,), filled with p
    (mask,) = m.draw_masks(x)
    assert mask.recurrent is None and mask.candidate is None and mask.weight is None
    assert mask.zoneout.shape == (H,) and torch.all(mask.zoneout == p)


# -- 3. recurrent dropout ----------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_recurrent_masks_shape_and_values(p):
    m = make("gru", H=4, layers=2, bidir=True, recurrent_dropout=p)
    x, _ = inputs(5, 3, 3, 4)
    masks = masks_for(m, x)
    assert len(masks) == 4 and all(isinstance(mk, LayerMasks) for mk in masks)
    for mk in masks:
        assert mk.candidate is None and mk.zoneout is None and mk.weight is None
        assert mk.recurrent.shape == (3, 4) and mk.recurrent.dtype == DT
        values = set(mk.recurrent.unique().tolist())
        assert values <= {0.0, 1 / (1 - p)}, values
    # the packed input's batch (rows of the first step) sets N, not T * N
    packed_masks = masks_for(m, x, [5, 2, 4])
    assert all(mk.recurrent.shape == (3, 4) for mk in packed_masks)
    cell = grukit.GRUCell(3, 4, recurrent_dropout=p, backend="reference", dtype=DT)
    cm = cell.draw_masks(6, gen(0))
    assert cm.recurrent.shape == (6, 4) and set(cm.recurrent.unique().tolist()) <= {
        0.0,
        1 / (1 - p),
    }


def test_recurrent_masks_differ_across_sequences_and_layers():
    m = make("gru", Hin=3, H=8, layers=2, bidir=True, recurrent_dropout=0.5)
    x = torch.zeros(2, 64, 3, dtype=DT)
    masks = masks_for(m, x)
    rec = masks[0].recurrent
    assert rec.shape == (64, 8)
    distinct = torch.unique(rec, dim=0).shape[0]
    assert distinct > 32, f"only {distinct} distinct rows of 64: the mask is not per sequence"
    dropped = (rec == 0).double().mean().item()
    assert 0.35 < dropped < 0.65, dropped
    for a, b in itertools.combinations(range(4), 2):
        assert not torch.equal(masks[a].recurrent, masks[b].recurrent), (a, b)


@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
def test_forward_draws_what_draw_masks_draws(layers, bidir):
    """A seeded generator: forward(generator=g) == forward(masks=draw_masks(x, g)); the same
    for torch's default generator; two unseeded calls differ."""
    D = 2 if bidir else 1
    m = make("gru", layers=layers, bidir=bidir, **ON)
    x, h0 = inputs(5, 3, 3, 4, layers, D)
    for lengths in (None, [5, 2, 4]):
        inp = as_input(m, x, lengths)
        drawn = m(inp, h0, generator=gen(7))
        given = m(inp, h0, masks=m.draw_masks(inp, gen(7)))
        for a, b in zip(drawn, given, strict=True):
            a, b = (a.data, b.data) if isinstance(a, PackedSequence) else (a, b)
            assert torch.equal(a, b)
    torch.manual_seed(5)
    drawn = m(x, h0)
    torch.manual_seed(5)
    given = m(x, h0, masks=m.draw_masks(x))
    assert torch.equal(drawn[0], given[0]) and torch.equal(drawn[1], given[1])
    assert not torch.equal(m(x, h0)[0], m(x, h0)[0]), "two training calls drew the same masks"


def test_recurrent_dropout_equals_reference_layer_with_the_mask():
    m = make("gru", recurrent_dropout=0.5)
    T, N, Hin, H = 5, 3, 3, 4
    x, h0 = inputs(T, N, Hin, H)
    out, hn = m(x, h0, generator=gen(9))
    (mk,) = m.draw_masks(x, gen(9))
    assert (mk.recurrent == 0).any()
    ref_out, ref_hn = reference_layer(
        VARIANTS["gru"], x.reshape(T * N, Hin), [N] * T, h0[0], m.layer_weights(0), False,
        CellExtras(recurrent=mk.recurrent),
    )  # fmt: skip
    assert torch.equal(out.reshape(T * N, H), ref_out) and torch.equal(hn[0], ref_hn)


@pytest.mark.parametrize("name", [n for n in VARIANT_NAMES if n != "mingru"])
def test_recurrent_mask_is_the_same_at_every_step(name):
    m = make(name, recurrent_dropout=0.5)
    x, h0 = inputs(6, 3, 3, 4)
    masks = masks_for(m, x)
    assert masks[0].recurrent.shape == (3, 4)  # one row per sequence, none per step
    assert (masks[0].recurrent == 0).any()
    out, hn = m(x, h0, masks=masks)
    loop_out, loop_h = manual_loop(m, x, h0, masks)
    torch.testing.assert_close(out, loop_out, atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(hn[0], loop_h, atol=1e-13, rtol=1e-13)
    plain = make(name)
    plain.load_state_dict(m.state_dict())
    assert (plain(x, h0)[0] - out).abs().max() > 1e-6, "the recurrent mask had no effect"


# -- 4. candidate dropout and zoneout: a mask per step -------------------------------------------


def test_step_masks_shape_values_and_change_per_step():
    T, N, H, p = 6, 64, 8, 0.5
    m = make("gru", H=H, candidate_dropout=p, zoneout=p)
    x = torch.zeros(T, N, 3, dtype=DT)
    (mk,) = masks_for(m, x)
    assert mk.recurrent is None and mk.weight is None
    assert mk.candidate.shape == (T * N, H) and mk.zoneout.shape == (T * N, H)
    assert set(mk.candidate.unique().tolist()) <= {0.0, 1 / (1 - p)}
    assert set(mk.zoneout.unique().tolist()) <= {0.0, 1.0}
    assert 0.35 < mk.zoneout.mean().item() < 0.65  # a keep mask: 1 with probability p
    for mask in (mk.candidate, mk.zoneout):
        steps = mask.view(T, N, H)
        for t in range(1, T):
            changed = (steps[t] != steps[t - 1]).double().mean().item()
            assert changed > 0.3, f"step {t}: only {changed:.2f} of the mask changed"
            assert not torch.equal(steps[t], steps[0]), f"step {t} repeats step 0's mask"
    assert not torch.equal(mk.candidate != 0, mk.zoneout != 0)  # independent draws
    # packed: one row per packed row
    lengths = [6, 2, 5, 1]
    (pk,) = masks_for(m, torch.zeros(6, 4, 3, dtype=DT), lengths)
    assert pk.candidate.shape == (sum(lengths), H) and pk.zoneout.shape == (sum(lengths), H)


@pytest.mark.parametrize("name", ["gru", "gru_reset_before", "mgu", "gru3", "mingru"])
def test_step_masks_are_applied_row_by_row(name):
    m = make(name, candidate_dropout=0.5, zoneout=0.5)
    x, h0 = inputs(6, 3, 3, 4)
    masks = masks_for(m, x)
    out, hn = m(x, h0, masks=masks)
    loop_out, loop_h = manual_loop(m, x, h0, masks)
    torch.testing.assert_close(out, loop_out, atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(hn[0], loop_h, atol=1e-13, rtol=1e-13)
    # the same rows in another order (each step gets step 0's) compute something else
    first = LayerMasks(
        candidate=masks[0].candidate[:3].repeat(6, 1), zoneout=masks[0].zoneout[:3].repeat(6, 1)
    )
    assert (m(x, h0, masks=[first])[0] - out).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["gru", "mgu", "mingru"])
def test_packed_masks_rows_follow_the_sorted_packed_order(name):
    """A packed batch (enforce_sorted=False) equals each sequence alone, given its masks: the
    recurrent mask's row ``k`` is sorted sequence ``k``, the step masks' rows the packed rows."""
    m = make(name, layers=1, bidir=True, **allowed(name))
    lengths = [2, 5, 3]
    T, N, Hin, H = 5, 3, 3, 4
    x, h0 = inputs(T, N, Hin, H, 1, 2)
    packed = as_input(m, x, lengths)
    masks = m.draw_masks(packed, gen(4))
    out, hn = m(packed, h0, masks=masks)
    out, _ = pad_packed_sequence(out)
    bs = packed.batch_sizes.tolist()
    offsets = [sum(bs[:t]) for t in range(len(bs))]
    for k, b in enumerate(packed.sorted_indices.tolist()):
        L = lengths[b]
        rows = [offsets[t] + k for t in range(L)]
        alone = [
            LayerMasks(
                None if mk.recurrent is None else mk.recurrent[k : k + 1],
                None if mk.candidate is None else mk.candidate[rows],
                None if mk.zoneout is None else mk.zoneout[rows],
                mk.weight,
            )
            for mk in masks
        ]
        o, h = m(x[:L, b : b + 1], h0[:, b : b + 1], masks=alone)
        torch.testing.assert_close(out[:L, b : b + 1], o, atol=1e-13, rtol=1e-13)
        torch.testing.assert_close(hn[:, b : b + 1], h, atol=1e-13, rtol=1e-13)


def test_batch_first_masks_are_time_major_rows():
    """Masks index the packed (time-major) rows whatever the layout of the input."""
    tf = make("gru", **ON)
    bf = make("gru", batch_first=True, **ON)
    bf.load_state_dict(tf.state_dict())
    x, h0 = inputs(5, 3, 3, 4)
    masks = masks_for(tf, x)
    assert [tuple(t.shape) for t in masks_for(bf, x.transpose(0, 1))[0] if t is not None] == [
        tuple(t.shape) for t in masks[0] if t is not None
    ]
    out_tf, hn_tf = tf(x, h0, masks=masks)
    out_bf, hn_bf = bf(x.transpose(0, 1), h0, masks=masks)
    assert torch.equal(out_bf.transpose(0, 1), out_tf) and torch.equal(hn_bf, hn_tf)


def test_unbatched_input_masks():
    m = make("gru", **ON)
    x, h0 = inputs(5, 1, 3, 4)
    masks = m.draw_masks(x[:, 0], gen(2))
    assert masks[0].recurrent.shape == (1, 4) and masks[0].candidate.shape == (5, 4)
    out, hn = m(x[:, 0], h0[:, 0], masks=masks)
    out_b, hn_b = m(x, h0, masks=masks)
    assert torch.equal(out, out_b[:, 0]) and torch.equal(hn, hn_b[:, 0])


# -- 5. the reference computes the documented math (hand-written GRU equations) -------------------


def _ln(u, gain, H):
    """Layer normalisation of each H-wide block of ``u``, then the block's gain."""
    if gain is None:
        return u
    K = u.shape[-1] // H
    parts = [F.layer_norm(u[:, k * H : (k + 1) * H], (H,)) * gain[k * H : (k + 1) * H]
             for k in range(K)]  # fmt: skip
    return torch.cat(parts, -1)


def hand_gru(x, h0, P, mk, reverse, reset):
    """``gru`` (reset="after") / ``gru_reset_before`` over padded x ``(T, N, H_in)`` with the
    options written out: h~ = m_rec h; LN(W x) g + b_i; LN(U h~) g + b_h; n~ = m_c n;
    h' = m_z h + (1 - m_z) ((1 - z) n~ + z h)."""
    T, N, _ = x.shape
    H = h0.shape[-1]
    W, U, b_i, b_h = P["weight_ih"], P["weight_hh"], P["bias_ih"], P["bias_hh"]
    g_i, g_h = P.get("layer_norm_ih"), P.get("layer_norm_hh")
    if mk.weight is not None:
        U = U * mk.weight
    ones = torch.ones(T, N, H, dtype=x.dtype)
    cand = ones if mk.candidate is None else mk.candidate.view(T, N, H)
    if mk.zoneout is None:
        zone = 0 * ones
    else:
        zone = mk.zoneout.view(T, N, H) if mk.zoneout.dim() == 2 else mk.zoneout.expand(T, N, H)
    U_r, U_z, U_n = U.split(H, 0)
    bh_r, bh_z, bh_n = b_h.split(H)
    gh = [None] * 3 if g_h is None else list(g_h.split(H))

    def rec(inp, U_k, g_k, b_k):
        u = inp @ U_k.T
        return (u if g_k is None else F.layer_norm(u, (H,)) * g_k) + b_k

    h, outs = h0, [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        a_r, a_z, a_n = (_ln(x[t] @ W.T, g_i, H) + b_i).split(H, -1)
        hd = h if mk.recurrent is None else h * mk.recurrent
        r = torch.sigmoid(a_r + rec(hd, U_r, gh[0], bh_r))
        z = torch.sigmoid(a_z + rec(hd, U_z, gh[1], bh_z))
        if reset == "after":
            n = torch.tanh(a_n + r * rec(hd, U_n, gh[2], bh_n))
        else:
            n = torch.tanh(a_n + rec(r * hd, U_n, gh[2], bh_n))
        n = n * cand[t]
        h_new = (1 - z) * n + z * h
        h = zone[t] * h + (1 - zone[t]) * h_new
        outs[t] = h
    return torch.stack(outs), h


OPTION_SETS = {**{k: (k,) for k in OPTION_NAMES}, "all": OPTION_NAMES}


@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("name,reset", [("gru", "after"), ("gru_reset_before", "before")])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_reference_equals_hand_written_equations(name, reset, options, mode):
    m = make(name, Hin=3, H=4, bidir=True, **allowed(name, OPTION_SETS[options]))
    m.train(mode == "train")
    T, N, H = 5, 3, 4
    x, h0 = inputs(T, N, 3, H, 1, 2)
    x.requires_grad_(), h0.requires_grad_()
    masks = masks_for(m, x)
    out, hn = m(x, h0, masks=masks)
    halves = []
    for d in range(2):
        suffix = "_l0" + ("_reverse" if d else "")
        P = {k[: -len(suffix)]: p for k, p in m.named_parameters() if k.endswith(suffix)}
        halves.append(hand_gru(x, h0[d], P, masks[d], d == 1, reset))
    hand_out = torch.cat([halves[0][0], halves[1][0]], -1)
    hand_hn = torch.stack([halves[0][1], halves[1][1]])
    torch.testing.assert_close(out, hand_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(hn, hand_hn, atol=1e-12, rtol=1e-12)
    wrt = [x, h0, *m.parameters()]

    def grads(o, h):
        loss = (o * _weights_like(o, 1)).sum() + (h * _weights_like(h, 2)).sum()
        return torch.autograd.grad(loss, wrt, retain_graph=True)

    for a, b in zip(grads(out, hn), grads(hand_out, hand_hn), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_hand_written_equations_catch_a_swapped_reset():
    """The hand check can fail: the reset-before cell is not the reset-after one."""
    m = make("gru", bidir=False, **ON)
    x, h0 = inputs(5, 3, 3, 4)
    masks = masks_for(m, x)
    out, _ = m(x, h0, masks=masks)
    P = {k[:-3]: p for k, p in m.named_parameters()}
    wrong, _ = hand_gru(x, h0[0], P, masks[0], False, "before")
    assert (wrong - out).abs().max() > 1e-4


# -- 6. weight_drop ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in VARIANT_NAMES if n != "mingru"])
def test_weight_drop_equals_masked_weights(name):
    a = make(name, layers=2, bidir=True, weight_drop=0.5)
    b = make(name, layers=2, bidir=True)
    x, h0 = inputs(5, 3, 3, 4, 2, 2)
    masks = masks_for(a, x)
    names = [k for k, _ in a.named_parameters() if k.startswith("weight_hh")]
    assert len(masks) == len(names) == 4
    with torch.no_grad():
        for k, mk in zip(names, masks, strict=True):
            assert mk.recurrent is None and mk.candidate is None and mk.zoneout is None
            assert mk.weight.shape == getattr(a, k).shape
            assert set(mk.weight.unique().tolist()) <= {0.0, 2.0}
            assert (mk.weight == 0).any()
        state = a.state_dict()
        for k, mk in zip(names, masks, strict=True):
            state[k] = state[k] * mk.weight
        b.load_state_dict(state)
    for lengths in (None, [5, 2, 4]):
        got = run(a, x, h0, lengths, masks)
        want = run(b, x, h0, lengths)
        for k, mk in zip(names, masks, strict=True):  # d(W * M) = M * dW
            want["grad " + k] = want["grad " + k] * mk.weight
        assert_close_all(got, want, name, atol=1e-13, rtol=1e-13)
    for i in range(3):  # four layer-directions, four independent masks
        assert not torch.equal(masks[i].weight, masks[i + 1].weight)


def test_weight_drop_one_mask_per_call():
    m = make("gru", weight_drop=0.5)
    x, h0 = inputs(5, 3, 3, 4)
    assert torch.equal(m(x, h0, generator=gen(1))[0], m(x, h0, generator=gen(1))[0])
    assert not torch.equal(m(x, h0, generator=gen(1))[0], m(x, h0, generator=gen(2))[0])
    m.eval()
    (mk,) = m.draw_masks(x)
    assert mk.weight is None  # evaluation runs the full weights


# -- 7. minGRU: the scan equals the reference with the options ------------------------------------

MINGRU_SETS = {
    "candidate_dropout": ("candidate_dropout",),
    "zoneout": ("zoneout",),
    "layer_norm": ("layer_norm",),
    "all": ("candidate_dropout", "zoneout", "layer_norm"),
}
SHAPES = {"L1-uni": (1, False), "L2-bi": (2, True), "L1-bi": (1, True)}


@pytest.mark.parametrize("options", list(MINGRU_SETS))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mingru_scan_equals_reference(options, shape, packed, mode):
    layers, bidir = SHAPES[shape]
    D = 2 if bidir else 1
    scan, ref = pair(
        "mingru", ("scan", "reference"), Hin=3, H=5, layers=layers, bidir=bidir,
        **allowed("mingru", MINGRU_SETS[options]),
    )  # fmt: skip
    scan.train(mode == "train"), ref.train(mode == "train")
    x, h0 = inputs(6, 3, 3, 5, layers, D)
    lengths = [6, 2, 4] if packed else None
    h0 = h0 if packed else None
    masks = masks_for(ref, x, lengths)
    got = run(scan, x, h0, lengths, masks)
    want = run(ref, x, h0, lengths, masks)
    assert_close_all(got, want, f"mingru {options}")
    assert scan.last_backend == "scan" and ref.last_backend == "reference"
    plain = make("mingru", backend="reference", Hin=3, H=5, layers=layers, bidir=bidir)
    plain.load_state_dict(ref.state_dict(), strict=False)
    if not (mode == "eval" and options == "candidate_dropout"):  # the options act
        assert (run(plain, x, h0, lengths)["out"] - want["out"]).abs().max() > 1e-6


# -- 8. gradcheck with fixed masks ---------------------------------------------------------------


def _gradcheck(module, x, h0, lengths, masks):
    names = [k for k, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, h0, *ps):
        inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, hn = torch.func.functional_call(
            module, dict(zip(names, ps, strict=True)), (inp, h0), {"masks": masks}
        )
        return (out.data if isinstance(out, PackedSequence) else out), hn

    return torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7)


GRADCHECK_VARIANTS = ["gru", "gru_reset_before", "mgu", "gru3", "mingru"]


def _gradcheck_case(name, backend, packed):
    """Padded: one direction, two sequences; packed: both directions (the reverse one too)."""
    bidir = packed
    m = make(name, Hin=2, H=3, bidir=bidir, backend=backend, seed=2, **allowed(name))
    T, N = 3, 3 if packed else 2
    x, h0 = inputs(T, N, 2, 3, 1, 2 if bidir else 1)
    lengths = [2, 3, 1] if packed else None
    masks = masks_for(m, x, lengths)
    x.requires_grad_(), h0.requires_grad_()
    assert _gradcheck(m, x, h0, lengths, masks)
    assert m.last_backend == backend


@pytest.mark.parametrize("name", GRADCHECK_VARIANTS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_reference_with_fixed_masks(name, packed):
    _gradcheck_case(name, "reference", packed)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_scan_with_fixed_masks(packed):
    _gradcheck_case("mingru", "scan", packed)


@needs_fused_options
@pytest.mark.parametrize("name", GRADCHECK_VARIANTS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_fused_with_fixed_masks(name, packed):
    _gradcheck_case(name, "fused", packed)


# -- 9. layer normalisation ----------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_layer_norm_parameters(name):
    v = VARIANTS[name]
    H = 4
    m = grukit.GRU(3, H, 2, bidirectional=True, variant=name, layer_norm=True, dtype=DT)
    params = dict(m.named_parameters())
    for layer, suffix in itertools.product((0, 1), ("", "_reverse")):
        ih = params.pop(f"layer_norm_ih_l{layer}{suffix}")
        assert ih.shape == (len(v.x_blocks) * H,) and torch.all(ih == 1)
        if v.h_blocks:
            hh = params.pop(f"layer_norm_hh_l{layer}{suffix}")
            assert hh.shape == (len(v.h_blocks) * H,) and torch.all(hh == 1)
        else:
            assert f"layer_norm_hh_l{layer}{suffix}" not in params
        assert m.layer_norm_gains(layer, 1 if suffix else 0)[0] is ih
    plain = grukit.GRU(3, H, 2, bidirectional=True, variant=name, dtype=DT)
    assert sorted(params) == sorted(k for k, _ in plain.named_parameters())
    assert not any("layer_norm" in k for k in params)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_count_parameters_with_layer_norm(name):
    for layers, bidir, norm, bias in itertools.product((1, 2), (False, True), (False, True),
                                                       (True, False)):  # fmt: skip
        if not bias and VARIANTS[name].needs_bias:
            continue
        m = grukit.GRU(3, 5, layers, bias=bias, bidirectional=bidir, variant=name,
                       layer_norm=norm)  # fmt: skip
        got = grukit.count_parameters(
            name, 3, 5, layers, bidirectional=bidir, bias=bias, layer_norm=norm
        )
        assert got == sum(p.numel() for p in m.parameters()), (layers, bidir, norm, bias)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_layer_norm_state_dict_round_trip(name):
    opts = allowed(name)
    a = make(name, layers=2, bidir=True, **opts)
    b = grukit.GRU(3, 4, 2, bidirectional=True, variant=name, backend="reference", dtype=DT,
                   **opts)  # fmt: skip
    b.load_state_dict(a.state_dict())
    x, h0 = inputs(5, 3, 3, 4, 2, 2)
    masks = masks_for(a, x, [5, 2, 4])
    assert_equal_all(run(b, x, h0, [5, 2, 4], masks), run(a, x, h0, [5, 2, 4], masks), "train")
    a.eval(), b.eval()
    assert_equal_all(run(b, x, h0), run(a, x, h0), "eval")
    # strict loading refuses the gains in a module without layer norm, and the other way round
    without = grukit.GRU(3, 4, 2, bidirectional=True, variant=name, dtype=DT)
    with pytest.raises(RuntimeError, match="layer_norm_ih_l0"):
        without.load_state_dict(a.state_dict())
    with pytest.raises(RuntimeError, match="layer_norm_ih_l0"):
        b.load_state_dict(without.state_dict())


def test_block_layer_norm_statistics():
    K, H = 3, 4
    g = gen(3)
    scale = torch.tensor([0.1, 3.0, 20.0], dtype=DT).repeat_interleave(H)
    offset = torch.tensor([-5.0, 0.0, 40.0], dtype=DT).repeat_interleave(H)
    u = torch.randn(6, K * H, generator=g, dtype=DT) * scale + offset
    gain = torch.randn(K * H, generator=g, dtype=DT)
    got = block_layer_norm(u, gain, H)
    want = (F.layer_norm(u.view(-1, K, H), (H,)) * gain.view(K, H)).view(-1, K * H)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=1e-14)
    blocks = u.view(-1, K, H)
    mean = blocks.mean(-1, keepdim=True)
    var = ((blocks - mean) ** 2).mean(-1, keepdim=True)  # biased
    by_hand = ((blocks - mean) / torch.sqrt(var + 1e-5) * gain.view(K, H)).view(-1, K * H)
    torch.testing.assert_close(got, by_hand, atol=1e-12, rtol=1e-12)
    whole_row = F.layer_norm(u, (K * H,)) * gain  # normalising the row instead shows
    assert (whole_row - got).abs().max() > 0.1


def test_layer_norm_first_step_by_hand():
    """gains = 1: r = sigma(LN(W_ir x) + b_ir + LN(W_hr h0) + b_hr), and so on, for step 0."""
    torch.manual_seed(0)
    m = grukit.GRU(3, 4, backend="reference", dtype=DT, layer_norm=True)
    assert all(torch.all(p == 1) for k, p in m.named_parameters() if "layer_norm" in k)
    N, H = 3, 4
    x, h0 = inputs(1, N, 3, H)
    w = m.layer_weights(0)
    ln_ih, ln_hh = m.layer_norm_gains(0)
    W_r, W_z, W_n = w.weight_ih.split(H, 0)
    U_r, U_z, U_n = w.weight_hh.split(H, 0)
    bi_r, bi_z, bi_n = w.bias_ih.split(H)
    bh_r, bh_z, bh_n = w.bias_hh.split(H)

    def ln(t):
        return F.layer_norm(t, (H,))

    gx = input_projection(x[0], w, ln_ih, H)
    want_gx = torch.cat([ln(x[0] @ W_r.T) + bi_r, ln(x[0] @ W_z.T) + bi_z,
                         ln(x[0] @ W_n.T) + bi_n], -1)  # fmt: skip
    torch.testing.assert_close(gx, want_gx, atol=1e-14, rtol=1e-14)
    h = h0[0]
    r = torch.sigmoid(ln(x[0] @ W_r.T) + bi_r + ln(h @ U_r.T) + bh_r)
    z = torch.sigmoid(ln(x[0] @ W_z.T) + bi_z + ln(h @ U_z.T) + bh_z)
    n = torch.tanh(ln(x[0] @ W_n.T) + bi_n + r * (ln(h @ U_n.T) + bh_n))
    h1 = (1 - z) * n + z * h
    out, _ = m(x, h0)
    torch.testing.assert_close(out[0], h1, atol=1e-13, rtol=1e-13)
    step = cell_step(VARIANTS["gru"], gx, h, w.weight_hh, w.bias_hh, CellExtras(ln_hh=ln_hh))
    torch.testing.assert_close(step, h1, atol=1e-13, rtol=1e-13)
    r_plain = torch.sigmoid(x[0] @ W_r.T + bi_r + h @ U_r.T + bh_r)
    assert (r_plain - r).abs().max() > 1e-3  # the normalisation matters here


# -- 10. errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [grukit.GRU, grukit.GRUCell], ids=["GRU", "GRUCell"])
@pytest.mark.parametrize("option", PROBABILITIES)
@pytest.mark.parametrize("value", [1.0, 1, -0.1, 1.5, "x", None, True])
def test_probability_out_of_range(cls, option, value):
    with pytest.raises(ValueError, match=r"\[0, 1\)") as info:
        cls(3, 4, **{option: value})
    assert option in str(info.value)


@pytest.mark.parametrize("cls", [grukit.GRU, grukit.GRUCell], ids=["GRU", "GRUCell"])
@pytest.mark.parametrize("option", NOT_FOR_MINGRU)
def test_recurrent_options_rejected_for_mingru(cls, option):
    with pytest.raises(ValueError, match="minGRU") as info:
        cls(3, 4, variant="mingru", **{option: 0.2})
    assert option in str(info.value)
    cls(3, 4, variant="mingru", candidate_dropout=0.2, zoneout=0.2, layer_norm=True)  # accepted


@pytest.mark.parametrize("cls", [grukit.GRU, grukit.GRUCell], ids=["GRU", "GRUCell"])
@pytest.mark.parametrize("variant", ["lstm", "rnn_tanh"])
@pytest.mark.parametrize("option", OPTION_NAMES)
def test_options_rejected_for_baselines(cls, variant, option):
    with pytest.raises(ValueError, match=option):
        cls(3, 4, variant=variant, **{option: ON[option]})


@pytest.mark.parametrize("cls", [grukit.GRU, grukit.GRUCell], ids=["GRU", "GRUCell"])
@pytest.mark.parametrize("value", ["yes", "False", None])
def test_layer_norm_must_be_a_bool(cls, value):
    with pytest.raises(ValueError, match="layer_norm"):
        cls(3, 4, layer_norm=value)


def _module_and_masks():
    m = make("gru", layers=2, bidir=True, zoneout=0.3, recurrent_dropout=0.3)
    x, h0 = inputs(5, 3, 3, 4, 2, 2)
    return m, x, h0, masks_for(m, x)


def test_masks_wrong_count():
    m, x, h0, masks = _module_and_masks()
    for wrong in (masks[:3], [*masks, masks[0]], []):
        with pytest.raises(ValueError, match="one LayerMasks per layer-direction"):
            m(x, h0, masks=wrong)
    one = make("gru", zoneout=0.3)
    with pytest.raises((ValueError, TypeError), match="LayerMasks"):
        one(x, masks=one.draw_masks(x)[0])  # a LayerMasks, not a list of them


def test_masks_wrong_shape():
    m, x, h0, masks = _module_and_masks()
    bad = list(masks)
    bad[1] = masks[1]._replace(recurrent=torch.ones(4, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"masks\[1\]\.recurrent.*shape"):
        m(x, h0, masks=bad)
    bad = list(masks)
    bad[3] = masks[3]._replace(zoneout=torch.ones(5, 3, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"masks\[3\]\.zoneout.*shape"):
        m(x, h0, masks=bad)
    bad[3] = masks[3]._replace(zoneout=torch.ones(5, dtype=DT))
    with pytest.raises(ValueError, match=r"masks\[3\]\.zoneout.*shape"):
        m(x, h0, masks=bad)
    # padded-size masks for a packed batch: R = sum(lengths), not T * N
    with pytest.raises(ValueError, match=r"zoneout.*shape"):
        m(as_input(m, x, [5, 2, 4]), h0, masks=masks)
    wd = make("gru", weight_drop=0.3)
    (mk,) = masks_for(wd, x)
    with pytest.raises(ValueError, match=r"masks\[0\]\.weight.*shape"):
        wd(x, masks=[mk._replace(weight=mk.weight[:, :3])])


def test_masks_wrong_dtype_or_device_or_type():
    m, x, h0, masks = _module_and_masks()
    bad = list(masks)
    bad[0] = masks[0]._replace(recurrent=masks[0].recurrent.float())
    with pytest.raises((ValueError, TypeError), match=r"masks\[0\]\.recurrent.*float"):
        m(x, h0, masks=bad)
    bad[0] = masks[0]._replace(recurrent=torch.ones(3, 4, dtype=DT, device="meta"))
    with pytest.raises((ValueError, TypeError), match=r"masks\[0\]\.recurrent.*meta"):
        m(x, h0, masks=bad)
    bad[0] = masks[0]._replace(recurrent=[[1.0] * 4] * 3)
    with pytest.raises((ValueError, TypeError), match=r"masks\[0\]\.recurrent"):
        m(x, h0, masks=bad)
    bad[0] = tuple(masks[0])  # a plain tuple, not a LayerMasks
    with pytest.raises(TypeError, match="LayerMasks"):
        m(x, h0, masks=bad)


def test_masks_for_an_option_that_is_off():
    m, x, h0, masks = _module_and_masks()
    bad = list(masks)
    bad[2] = masks[2]._replace(candidate=torch.ones(15, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"masks\[2\]\.candidate.*candidate_dropout"):
        m(x, h0, masks=bad)
    plain = make("gru")
    with pytest.raises(ValueError, match="zoneout"):
        plain(x, masks=[LayerMasks(zoneout=torch.ones(4, dtype=DT))])
    cell = grukit.GRUCell(3, 4, backend="reference", dtype=DT)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        cell(x[0], masks=LayerMasks(recurrent=torch.ones(3, 4, dtype=DT)))


def test_cell_masks_errors():
    cell = grukit.GRUCell(3, 4, backend="reference", dtype=DT, zoneout=0.3)
    x = torch.randn(3, 3, dtype=DT)
    with pytest.raises(TypeError, match="LayerMasks"):
        cell(x, masks=[cell.draw_masks(3)])
    with pytest.raises(ValueError, match="zoneout.*shape"):
        cell(x, masks=cell.draw_masks(4))


@pytest.mark.parametrize("variant", ["lstm", "rnn_tanh"])
def test_masks_are_not_silently_ignored_by_baselines(variant):
    """A baseline has no in-cell option, so any mask given to it is for an option that is off."""
    m = grukit.GRU(3, 4, variant=variant)
    x = torch.randn(5, 3, 3)
    with pytest.raises(ValueError, match="masks"):
        m(x, masks=[LayerMasks(recurrent=torch.ones(3, 4))])
    cell = grukit.GRUCell(3, 4, variant=variant)
    with pytest.raises(ValueError, match="masks"):
        cell(x[0], masks=LayerMasks(recurrent=torch.ones(3, 4)))


# -- 11. fused: bit-identical across thread counts -------------------------------------------------


# the kernel's three ways of using threads, by shape (N, T, H_in, H; see tests/test_fused.py):
# the path depends on N and H (split: N*H > 8192; blocks: 32 or more rows), so T is shorter here
# (overlap needs two chunks, and a serial backward makes at least sixteen when the steps allow)
THREADING_SHAPES = {
    "split": (64, 6, 40, 130),
    "blocks": (40, 8, 7, 48),
    "overlap": (12, 16, 9, 40),
}


@needs_fused_options
@pytest.mark.parametrize("path", list(THREADING_SHAPES))
@pytest.mark.parametrize("name", ["gru", "gru_reset_before", "mgu", "mingru"])
def test_fused_options_bitwise_identical_across_thread_counts(name, path, restore_threads):
    N, T, Hin, H = THREADING_SHAPES[path]
    m = make(name, Hin=Hin, H=H, bidir=True, backend="fused", seed=5, dtype=torch.float32,
             **allowed(name))  # fmt: skip
    g = gen(6)
    x = torch.randn(T, N, Hin, generator=g)
    h0 = torch.randn(2, N, H, generator=g)
    lengths = ([T] * 40 + [T - 3] * 10 + [1 + i % T for i in range(N)])[:N]
    masks_pad, masks_packed = masks_for(m, x), masks_for(m, x, lengths)
    results = {}
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        results.setdefault(threads, []).append(
            (run(m, x, h0, None, masks_pad), run(m, x, h0, lengths, masks_packed))
        )
    assert m.last_backend == "fused"
    (a_pad, a_packed), (c_pad, c_packed) = results[1]
    ((b_pad, b_packed),) = results[2]
    for ref, other in ((a_pad, b_pad), (a_packed, b_packed), (a_pad, c_pad)):
        assert_equal_all(ref, other, f"{name} {path}: 1 vs 2 threads")


# -- 12. fused == reference --------------------------------------------------------------------

MATRIX_SHAPES = {"L1-uni": (1, False), "L2-bi": (2, True)}


@needs_fused_options
@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("shape", list(MATRIX_SHAPES))
@pytest.mark.parametrize("layout", ["padded", "packed-h0"])
def test_fused_options_equal_reference(name, options, shape, layout):
    wanted = OPTION_SETS[options]
    if name == "mingru" and options in NOT_FOR_MINGRU:
        pytest.skip(f"minGRU has no {options}")
    layers, bidir = MATRIX_SHAPES[shape]
    D = 2 if bidir else 1
    fused, ref = pair(name, Hin=3, H=4, layers=layers, bidir=bidir, seed=layers + 3 * bidir,
                      **allowed(name, wanted))  # fmt: skip
    x, h0 = inputs(5, 3, 3, 4, layers, D)
    lengths, h0 = ([5, 2, 4], h0) if layout == "packed-h0" else (None, None)
    masks = masks_for(ref, x, lengths)
    got = run(fused, x, h0, lengths, masks)
    assert_close_all(got, run(ref, x, h0, lengths, masks), f"{name} {options}")
    assert fused.last_backend == "fused" and ref.last_backend == "reference"


@needs_fused_options
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_fused_options_equal_reference_in_eval(name):
    """Evaluation: zoneout's (H,) expectation, layer norm, no dropout."""
    fused, ref = pair(name, Hin=3, H=4, layers=2, bidir=True, **allowed(name))
    fused.eval(), ref.eval()
    x, h0 = inputs(5, 3, 3, 4, 2, 2)
    for lengths in (None, [5, 2, 4]):
        assert_close_all(run(fused, x, h0, lengths), run(ref, x, h0, lengths), name)


@needs_fused_options
@pytest.mark.parametrize("name", ["gru", "mingru"])
def test_fused_kernel_runs_with_options(name):
    m = make(name, layers=2, bidir=True, backend="fused", **allowed(name))
    x, h0 = inputs(5, 3, 3, 4, 2, 2)
    before = grukit.fused.call_count()
    m(x, h0, masks=masks_for(m, x))
    assert m.last_backend == "fused"
    assert grukit.fused.call_count() > before
    cell = grukit.GRUCell(3, 4, variant=name, backend="fused", dtype=DT, **allowed(name))
    before = grukit.fused.call_count()
    cell(x[0], h0[0])
    assert cell.last_backend == "fused" and grukit.fused.call_count() > before


# -- 13. repr and GRUCell ------------------------------------------------------------------------


def test_repr_shows_the_options():
    opts = {"recurrent_dropout": 0.25, "candidate_dropout": 0.1, "zoneout": 0.2,
            "layer_norm": True, "weight_drop": 0.3}  # fmt: skip
    for m in (grukit.GRU(3, 4, **opts), grukit.GRUCell(3, 4, **opts)):
        text = repr(m)
        for k, v in opts.items():
            assert f"{k}={v!r}" in text, text
    assert repr(grukit.GRU(3, 4, zoneout=0.2)) == "GRU(3, 4, zoneout=0.2)"
    for m in (grukit.GRU(3, 4, **OFF), grukit.GRUCell(3, 4, **OFF)):
        assert not any(k in repr(m) for k in OPTION_NAMES), repr(m)


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cell_with_options_equals_one_layer_gru(name, mode):
    opts = allowed(name)
    gru = make(name, **opts)
    cell = grukit.GRUCell(3, 4, variant=name, backend="reference", dtype=DT, **opts)
    v = VARIANTS[name]
    expected = {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "layer_norm_ih", "layer_norm_hh"}
    if not v.h_blocks:
        expected -= {"weight_hh", "layer_norm_hh"}
    if not v.bias_ih_blocks:
        expected -= {"bias_ih"}
    if not v.bias_hh_blocks:
        expected -= {"bias_hh"}
    assert {k for k, _ in cell.named_parameters()} == expected
    cell.load_state_dict({k[:-3]: p for k, p in gru.state_dict().items()})
    gru.train(mode == "train"), cell.train(mode == "train")
    N = 3
    x, h0 = inputs(1, N, 3, 4)
    mk = cell.draw_masks(N, gen(8))
    res = []
    for f in (lambda a, b: cell(a, b, masks=mk), lambda a, b: gru(a[None], b[None], masks=[mk])):
        leaves = [x[0].clone().requires_grad_(), h0[0].clone().requires_grad_()]
        out = f(*leaves)
        out = out if isinstance(out, torch.Tensor) else out[0][0]
        res.append((out, *torch.autograd.grad(out.pow(2).sum(), leaves)))
    for a, b in zip(*res, strict=True):
        assert torch.equal(a, b)
    # a cell draws its own masks when none are given (as GRU.draw_masks would for one step)
    assert torch.equal(cell(x[0], h0[0], generator=gen(8)), res[0][0])
    # unbatched
    one = cell.draw_masks(1, gen(3))
    assert torch.equal(cell(x[0, 0], h0[0, 0], masks=one), cell(x[0, :1], h0[0, :1], masks=one)[0])


@pytest.mark.parametrize("name", ["gru", "gru_reset_before", "mgu", "mingru"])
def test_cell_loop_with_one_mask_equals_gru_with_tiled_masks(name):
    """The cell's docstring: one LayerMasks passed at every step holds the recurrent mask over
    the sequence; the step masks then repeat, which GRU gets as tiled (R, H) masks."""
    opts = allowed(name)
    gru = make(name, **opts)
    cell = grukit.GRUCell(3, 4, variant=name, backend="reference", dtype=DT, **opts)
    cell.load_state_dict({k[:-3]: p for k, p in gru.state_dict().items()})
    T, N = 5, 3
    x, h0 = inputs(T, N, 3, 4)
    mk = cell.draw_masks(N, gen(9))
    h, outs = h0[0], []
    for t in range(T):
        h = cell(x[t], h, masks=mk)
        outs.append(h)
    tiled = LayerMasks(
        mk.recurrent,
        None if mk.candidate is None else mk.candidate.repeat(T, 1),
        mk.zoneout.repeat(T, 1),
        mk.weight,
    )
    out, hn = gru(x, h0, masks=[tiled])
    torch.testing.assert_close(torch.stack(outs), out, atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(h, hn[0], atol=1e-13, rtol=1e-13)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.25, 0.5, 0.9, 0.99999, 1.0])
def test_bernoulli_mask_keeps_the_asked_share(keep):
    from grukit.cell_options import bernoulli_mask

    n = 400_000
    m = bernoulli_mask(
        (n,), keep, torch.empty(0, dtype=torch.float64), torch.Generator().manual_seed(3)
    )
    assert m.dtype == torch.float64 and set(m.unique().tolist()) <= {0.0, 1.0}
    resolved = min(round(keep * 2**16) / 2**16, 1.0)
    sd = (resolved * (1 - resolved) / n) ** 0.5
    assert abs(m.mean().item() - resolved) <= 5 * sd + 1e-12
    # neighbours (lanes of one 64-bit draw) are independent
    if 0 < resolved < 1:
        both = (m[:-1] * m[1:]).mean().item()
        assert abs(both - resolved**2) <= 10 * sd


def test_bernoulli_mask_follows_the_generator():
    from grukit.cell_options import bernoulli_mask

    like = torch.empty(0)
    a = bernoulli_mask((37, 11), 0.3, like, torch.Generator().manual_seed(5))
    b = bernoulli_mask((37, 11), 0.3, like, torch.Generator().manual_seed(5))
    c = bernoulli_mask((37, 11), 0.3, like, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (37, 11)
