"""grukit.GRU / grukit.GRUCell as drop-ins for torch.nn.GRU / GRUCell, and the module API.

Every comparison loads torch's (seeded, random) weights into grukit and checks outputs, h_n and
the gradients of every input and parameter; float32 to 1e-5, float64 to 1e-10.
"""

from __future__ import annotations

import copy
import io
import itertools
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import grukit
import grukit.fused
from grukit.variants import VARIANTS

VARIANT_NAMES = list(VARIANTS)
FUSED_OK = grukit.fused.available()  # builds the kernels once, at collection
needs_fused = pytest.mark.skipif(
    not FUSED_OK, reason=f"fused kernels unavailable: {grukit.fused.unavailable_reason()}"
)
FUSED = pytest.param("fused", marks=needs_fused)
BACKENDS = ["reference", FUSED, "auto"]
AUTO_RUNS = "fused" if FUSED_OK else "reference"  # what backend="auto" runs on CPU float32/64
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}


# -- helpers ---------------------------------------------------------------------------------


def _weights_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)


def run(module, x, h0=None, lengths=None, *, grads=True):
    """Forward (and backward of a random linear loss): outputs, h_n, gradients by name.

    ``lengths``: pack ``x`` with enforce_sorted=False (outputs come back padded).
    ``h0`` may be a tuple (LSTM).
    """
    x = x.detach().clone().requires_grad_(grads)
    if isinstance(h0, tuple):
        h0 = tuple(h.detach().clone().requires_grad_(grads) for h in h0)
    elif h0 is not None:
        h0 = h0.detach().clone().requires_grad_(grads)
    batch_first = getattr(module, "batch_first", False)
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, hn = module(inp) if h0 is None else module(inp, h0)
    if lengths is not None:
        assert isinstance(out, PackedSequence)
        out, out_lengths = pad_packed_sequence(out, batch_first=batch_first)
        assert out_lengths.tolist() == list(lengths)
    res = {"out": out.detach(), "hn": hn.detach() if torch.is_tensor(hn) else hn}
    if not grads:
        return res
    hns = hn if isinstance(hn, tuple) else (hn,)
    loss = (out * _weights_like(out, 1)).sum()
    for i, h in enumerate(hns):
        loss = loss + (h * _weights_like(h, 2 + i)).sum()
    wrt = {"input": x}
    if isinstance(h0, tuple):
        wrt.update({f"h0_{i}": h for i, h in enumerate(h0)})
    elif h0 is not None:
        wrt["h0"] = h0
    wrt.update(dict(module.named_parameters()))
    got = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    res["grads"] = dict(zip(wrt, got, strict=True))
    return res


def assert_same(a, b, dtype, what=""):
    tol = TOL[dtype]
    for key in ("out", "hn"):
        x, y = a[key], b[key]
        if isinstance(x, tuple):
            for u, v in zip(x, y, strict=True):
                torch.testing.assert_close(u, v, **tol)
        else:
            print(f"{what} {key}: max abs diff {(x - y).abs().max().item():.3g}")
            torch.testing.assert_close(x, y, **tol)
    if "grads" in a:
        assert a["grads"].keys() == b["grads"].keys()
        for name in a["grads"]:
            ga, gb = a["grads"][name], b["grads"][name]
            assert ga is not None and gb is not None, f"{what}: no gradient for {name}"
            print(f"{what} grad {name}: max abs diff {(ga - gb).abs().max().item():.3g}")
            torch.testing.assert_close(ga, gb, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


def from_torch(theirs: nn.Module, *, variant="gru", backend="reference", **kw) -> grukit.GRU:
    ours = grukit.GRU(
        theirs.input_size,
        theirs.hidden_size,
        theirs.num_layers,
        bias=theirs.bias,
        batch_first=theirs.batch_first,
        dropout=theirs.dropout,
        bidirectional=theirs.bidirectional,
        variant=variant,
        backend=backend,
        dtype=next(theirs.parameters()).dtype,
        **kw,
    )
    ours.load_state_dict(theirs.state_dict())
    return ours


def rand_input(T, N, Hin, dtype, batch_first=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (N, T, Hin) if batch_first else (T, N, Hin)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def rand_h0(layers, D, N, H, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(layers * D, N, H, generator=gen, dtype=torch.float64).to(dtype)


# -- equivalence with torch.nn.GRU -----------------------------------------------------------

EQUIV_CASES = list(itertools.product((1, 2, 3), (False, True), (False, True), (True, False)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize(
    "layers,bidir,batch_first,bias",
    EQUIV_CASES,
    ids=[
        f"L{a}-{'bi' if b else 'uni'}-{'bf' if c else 'tf'}-{'b' if d else 'nob'}"
        for a, b, c, d in EQUIV_CASES
    ],
)
def test_equals_torch_gru(backend, dtype, with_h0, layers, bidir, batch_first, bias):
    T, N, Hin, H = 4, 3, 5, 6
    torch.manual_seed(layers * 100 + bidir * 10 + batch_first)
    theirs = nn.GRU(
        Hin, H, layers, bias=bias, batch_first=batch_first, bidirectional=bidir, dtype=dtype
    )
    ours = from_torch(theirs, backend=backend)
    x = rand_input(T, N, Hin, dtype, batch_first)
    h0 = rand_h0(layers, 2 if bidir else 1, N, H, dtype) if with_h0 else None
    expected = run(theirs, x, h0)
    got = run(ours, x, h0)
    assert_same(got, expected, dtype, backend)
    assert (
        ours.last_backend
        == {"reference": "reference", "fused": "fused", "auto": AUTO_RUNS}[backend]
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True), (3, False), (1, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
def test_packed_equals_torch_gru(backend, dtype, layers, bidir, batch_first, with_h0):
    lengths = [5, 1, 3, 5, 2]  # unsorted, ties, a length-1 sequence
    T, N, Hin, H = max(lengths), len(lengths), 4, 3
    torch.manual_seed(7 + layers)
    theirs = nn.GRU(Hin, H, layers, batch_first=batch_first, bidirectional=bidir, dtype=dtype)
    ours = from_torch(theirs, backend=backend)
    x = rand_input(T, N, Hin, dtype, batch_first)
    h0 = rand_h0(layers, 2 if bidir else 1, N, H, dtype) if with_h0 else None
    assert_same(run(ours, x, h0, lengths), run(theirs, x, h0, lengths), dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
def test_unbatched_equals_torch_gru(backend, batch_first, bidir, with_h0):
    dtype = torch.float64
    T, Hin, H, layers = 5, 3, 4, 2
    torch.manual_seed(3)
    theirs = nn.GRU(Hin, H, layers, batch_first=batch_first, bidirectional=bidir, dtype=dtype)
    ours = from_torch(theirs, backend=backend)
    x = torch.randn(T, Hin, dtype=dtype)
    h0 = torch.randn(layers * (2 if bidir else 1), H, dtype=dtype) if with_h0 else None
    got, expected = run(ours, x, h0), run(theirs, x, h0)
    assert got["out"].shape == (T, (2 if bidir else 1) * H)
    assert got["hn"].shape == (layers * (2 if bidir else 1), H)
    assert_same(got, expected, dtype, backend)


def test_equivalence_detects_a_wrong_weight():
    """Control: the comparison above notices a perturbed parameter (so it can fail)."""
    torch.manual_seed(0)
    theirs = nn.GRU(3, 4, dtype=torch.float64)
    ours = from_torch(theirs)
    with torch.no_grad():
        ours.weight_hh_l0[5, 1] += 1e-6
    x = rand_input(4, 2, 3, torch.float64)
    with pytest.raises(AssertionError):
        assert_same(run(ours, x), run(theirs, x), torch.float64)


@pytest.mark.parametrize("layers,bidir,bias", [(1, False, True), (2, True, False), (3, True, True)])
def test_same_seed_same_initial_weights(layers, bidir, bias):
    torch.manual_seed(1234)
    theirs = nn.GRU(5, 7, layers, bias=bias, bidirectional=bidir)
    torch.manual_seed(1234)
    ours = grukit.GRU(5, 7, layers, bias=bias, bidirectional=bidir)
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the initialiser is random (z and r rows differ), not constant
    w = ours.weight_hh_l0
    assert not torch.equal(w[:7], w[7:14])


def test_same_seed_same_initial_weights_cell():
    torch.manual_seed(99)
    theirs = nn.GRUCell(4, 6)
    torch.manual_seed(99)
    ours = grukit.GRUCell(4, 6)
    for (ka, a), (kb, b) in zip(
        theirs.state_dict().items(), ours.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(a, b), ka


# -- GRUCell ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["batched", "unbatched", "hx_none", "batch1"])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_cell_equals_torch(backend, dtype, mode, bias):
    Hin, H = 3, 5
    torch.manual_seed(11)
    theirs = nn.GRUCell(Hin, H, bias=bias, dtype=dtype)
    ours = grukit.GRUCell(Hin, H, bias=bias, dtype=dtype, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    N = 1 if mode == "batch1" else 4
    x = torch.randn(N, Hin, dtype=dtype)
    h = torch.randn(N, H, dtype=dtype)
    if mode == "unbatched":
        x, h = x[0], h[0]
    args = (x,) if mode == "hx_none" else (x, h)
    leaves = [a.clone().requires_grad_() for a in args]
    results = []
    for m in (ours, theirs):
        inputs = [a.detach().clone().requires_grad_() for a in leaves]
        out = m(*inputs)
        loss = (out * _weights_like(out, 3)).sum()
        gs = torch.autograd.grad(loss, [*inputs, *m.parameters()])
        results.append((out, *gs))
    assert results[0][0].shape == results[1][0].shape
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    assert (
        ours.last_backend
        == {"reference": "reference", "fused": "fused", "auto": AUTO_RUNS}[backend]
    )


# -- gradcheck of every variant ---------------------------------------------------------------


def _gradcheck_module(module, x, h0):
    names = [k for k, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, h0, *ps):
        out, hn = torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x, h0))
        if isinstance(out, PackedSequence):
            out = out.data
        return out, hn

    return torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("bidir", [False, True])
def test_gradcheck_reference(name, bidir):
    torch.manual_seed(0)
    H, T, N, Hin = 3, 3, 2, 2
    m = grukit.GRU(
        Hin, H, bidirectional=bidir, variant=name, backend="reference", dtype=torch.float64
    )
    x = torch.randn(T, N, Hin, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 if bidir else 1, N, H, dtype=torch.float64, requires_grad=True)
    assert _gradcheck_module(m, x, h0)


# -- packed batch == each sequence alone, every variant -------------------------------------


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("backend", ["reference", FUSED])
def test_packed_batch_equals_sequences_alone(name, bidir, backend):
    dtype = torch.float64
    lengths = [4, 1, 6, 3, 6]
    Hin, H, layers = 3, 4, 2
    D = 2 if bidir else 1
    torch.manual_seed(17)
    m = grukit.GRU(Hin, H, layers, bidirectional=bidir, variant=name, backend=backend, dtype=dtype)
    x = torch.randn(max(lengths), len(lengths), Hin, dtype=dtype)
    h0 = torch.randn(layers * D, len(lengths), H, dtype=dtype)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    with torch.no_grad():
        out, hn = m(packed, h0)
        out, _ = pad_packed_sequence(out)
        for b, L in enumerate(lengths):
            out_b, hn_b = m(x[:L, b : b + 1], h0[:, b : b + 1].contiguous())
            d = max(
                (out[:L, b] - out_b[:, 0]).abs().max().item(),
                (hn[:, b] - hn_b[:, 0]).abs().max().item(),
            )
            print(f"{name} seq {b}: max abs diff {d:.3g}")
            torch.testing.assert_close(out[:L, b], out_b[:, 0], atol=1e-12, rtol=1e-12)
            torch.testing.assert_close(hn[:, b], hn_b[:, 0], atol=1e-12, rtol=1e-12)
            assert torch.all(out[L:, b] == 0)


# -- dropout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", FUSED])
def test_dropout_only_in_training(backend):
    torch.manual_seed(0)
    m = grukit.GRU(4, 5, 2, dropout=0.5, backend=backend)
    x = torch.randn(6, 3, 4)
    m.train()
    a, ha = m(x)
    b, hb = m(x)
    assert (a - b).abs().max() > 1e-4, "train-mode dropout should make two calls differ"
    assert (ha[1] - hb[1]).abs().max() > 1e-4
    torch.testing.assert_close(ha[0], hb[0], atol=0, rtol=0)  # the first layer sees no dropout
    m.eval()
    c, hc = m(x)
    d, hd = m(x)
    assert torch.equal(c, d) and torch.equal(hc, hd)
    plain = grukit.GRU(4, 5, 2, dropout=0.0, backend=backend)
    plain.load_state_dict(m.state_dict())
    plain.train()  # no dropout at all: train mode equals eval mode
    e, he = plain(x)
    torch.testing.assert_close(c, e, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(hc, he, atol=1e-6, rtol=1e-6)


def test_dropout_matches_torch_in_eval():
    torch.manual_seed(0)
    theirs = nn.GRU(4, 5, 3, dropout=0.3).eval()
    ours = from_torch(theirs).eval()
    x = torch.randn(5, 2, 4)
    assert_same(run(ours, x), run(theirs, x), torch.float32)


# -- the step API ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("layout", ["batch_first", "time_first", "unbatched"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_step_equals_whole_sequence(name, layout, backend):
    dtype = torch.float64
    T, N, Hin, H, layers = 5, 3, 4, 3, 2
    batch_first = layout == "batch_first"
    torch.manual_seed(23)
    m = grukit.GRU(
        Hin, H, layers, batch_first=batch_first, variant=name, backend=backend, dtype=dtype
    )
    if layout == "unbatched":
        x = torch.randn(T, Hin, dtype=dtype)
        h0 = torch.randn(layers, H, dtype=dtype)
    else:
        x = rand_input(T, N, Hin, dtype, batch_first)
        h0 = rand_h0(layers, 1, N, H, dtype)
    with torch.no_grad():
        full, hn = m(x, h0)
        for start in (h0, None):
            state = start
            steps = []
            for t in range(T):
                xt = x[:, t] if batch_first else x[t]
                y, state = m.step(xt, state)
                steps.append(y)
            stepped = torch.stack(steps, 1 if batch_first else 0)
            if start is None:  # zero start: compare with the whole sequence from zeros
                full0, hn0 = m(x)
                torch.testing.assert_close(stepped, full0, atol=1e-12, rtol=1e-12)
                torch.testing.assert_close(state, hn0, atol=1e-12, rtol=1e-12)
            else:
                print(f"{name} step: max abs diff {(stepped - full).abs().max().item():.3g}")
                torch.testing.assert_close(stepped, full, atol=1e-12, rtol=1e-12)
                torch.testing.assert_close(state, hn, atol=1e-12, rtol=1e-12)
                assert state.shape == hn.shape


def test_step_on_bidirectional_raises():
    m = grukit.GRU(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        m.step(torch.randn(2, 3))


def test_step_gradients_flow():
    torch.manual_seed(1)
    m = grukit.GRU(3, 4, 2, backend="reference")
    x = torch.randn(3, 2, 3)
    y, s = m.step(x[0])
    y2, s2 = m.step(x[1], s)
    (y2.sum() + s2.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


# -- state_dict, repr --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gru", "mgu2", "mingru", "lstm"])
def test_state_dict_round_trip(name):
    torch.manual_seed(1)
    a = grukit.GRU(3, 4, 2, bidirectional=True, variant=name)
    torch.manual_seed(2)
    b = grukit.GRU(3, 4, 2, bidirectional=True, variant=name)
    x = torch.randn(5, 2, 3)
    assert not torch.allclose(a(x)[0], b(x)[0])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert list(a.state_dict()) == list(b.state_dict())
    assert torch.equal(a(x)[0], b(x)[0])
    c = copy.deepcopy(a)
    assert torch.equal(a(x)[0], c(x)[0])


def test_state_dict_loads_into_torch():
    torch.manual_seed(1)
    ours = grukit.GRU(3, 4, 2, bidirectional=True)
    theirs = nn.GRU(3, 4, 2, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())  # strict: same keys and shapes
    x = torch.randn(5, 2, 3)
    assert_same(run(ours, x), run(theirs, x), torch.float32)


def test_extra_repr_shows_non_defaults_only():
    assert repr(grukit.GRU(3, 4)) == "GRU(3, 4)"
    assert repr(grukit.GRUCell(3, 4)) == "GRUCell(3, 4)"
    m = grukit.GRU(
        3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True,
        variant="mgu", backend="reference",
    )  # fmt: skip
    r = repr(m)
    for part in ("num_layers=2", "bias=False", "batch_first=True", "dropout=0.25",
                 "bidirectional=True", "variant='mgu'", "backend='reference'"):  # fmt: skip
        assert part in r, r
    assert r.startswith("GRU(3, 4, ")
    r = repr(grukit.GRU(3, 4, variant="gru2"))
    assert r == "GRU(3, 4, variant='gru2')"
    assert repr(grukit.GRUCell(3, 4, bias=False, variant="mingru")) == (
        "GRUCell(3, 4, bias=False, variant='mingru')"
    )
    # torch's own repr for the same module reads the same for the shared arguments
    assert repr(nn.GRU(3, 4, num_layers=2)) == repr(grukit.GRU(3, 4, num_layers=2))


def test_flatten_parameters_and_all_weights():
    m = grukit.GRU(3, 4, 2, bidirectional=True)
    m.flatten_parameters()
    t = nn.GRU(3, 4, 2, bidirectional=True)
    assert [[tuple(w.shape) for w in ws] for ws in m.all_weights] == [
        [tuple(w.shape) for w in ws] for ws in t.all_weights
    ]


# -- property tests ------------------------------------------------------------------------------

shapes = st.fixed_dictionaries(
    {
        "layers": st.integers(1, 3),
        "H": st.integers(1, 9),
        "Hin": st.integers(1, 9),
        "T": st.integers(1, 7),
        "N": st.integers(1, 5),
        "bidir": st.booleans(),
        "batch_first": st.booleans(),
        "h0": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)
PROP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _shaped(s, dtype):
    torch.manual_seed(s["seed"])
    x = rand_input(s["T"], s["N"], s["Hin"], dtype, s["batch_first"], seed=s["seed"])
    D = 2 if s["bidir"] else 1
    h0 = rand_h0(s["layers"], D, s["N"], s["H"], dtype, seed=s["seed"] + 1) if s["h0"] else None
    return x, h0


@needs_fused
@PROP
@given(s=shapes, name=st.sampled_from(VARIANT_NAMES), packed=st.booleans())
def test_property_reference_equals_fused(s, name, packed):
    dtype = torch.float64
    x, h0 = _shaped(s, dtype)
    kw = {"num_layers": s["layers"], "batch_first": s["batch_first"], "bidirectional": s["bidir"]}
    ref = grukit.GRU(s["Hin"], s["H"], variant=name, backend="reference", dtype=dtype, **kw)
    fused = grukit.GRU(s["Hin"], s["H"], variant=name, backend="fused", dtype=dtype, **kw)
    fused.load_state_dict(ref.state_dict())
    lengths = None
    if packed:
        gen = torch.Generator().manual_seed(s["seed"])
        lengths = torch.randint(1, s["T"] + 1, (s["N"],), generator=gen).tolist()
        lengths[0] = s["T"]
    assert_same(run(fused, x, h0, lengths), run(ref, x, h0, lengths), dtype, name)


@PROP
@given(
    s=shapes,
    backend=st.sampled_from(["reference", "fused", "auto"] if FUSED_OK else ["reference", "auto"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_property_gru_equals_torch(s, backend, dtype):
    x, h0 = _shaped(s, dtype)
    theirs = nn.GRU(
        s["Hin"],
        s["H"],
        s["layers"],
        batch_first=s["batch_first"],
        bidirectional=s["bidir"],
        dtype=dtype,
    )
    ours = from_torch(theirs, backend=backend)
    assert_same(run(ours, x, h0), run(theirs, x, h0), dtype, backend)


# -- baselines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,cls", [("lstm", nn.LSTM), ("rnn_tanh", nn.RNN)])
@pytest.mark.parametrize(
    "layers,bidir,batch_first", [(1, False, False), (2, True, True), (3, False, True)]
)
@pytest.mark.parametrize("mode", ["h0", "no_h0", "packed"])
def test_baselines_equal_torch(name, cls, layers, bidir, batch_first, mode):
    dtype = torch.float64
    T, N, Hin, H = 5, 3, 4, 3
    D = 2 if bidir else 1
    torch.manual_seed(31)
    theirs = cls(Hin, H, layers, batch_first=batch_first, bidirectional=bidir, dtype=dtype)
    ours = from_torch(theirs, variant=name, backend="auto")
    x = rand_input(T, N, Hin, dtype, batch_first)
    h0 = None
    if mode == "h0":
        h0 = rand_h0(layers, D, N, H, dtype)
        if name == "lstm":
            h0 = (h0, rand_h0(layers, D, N, H, dtype, seed=5))
    lengths = [5, 2, 4] if mode == "packed" else None
    got, expected = run(ours, x, h0, lengths), run(theirs, x, h0, lengths)
    assert_same(got, expected, dtype, name)
    assert ours.last_backend == "torch"


@pytest.mark.parametrize(
    "name,cls", [("lstm", nn.LSTM), ("rnn_tanh", nn.RNN), ("gru", nn.GRU)], ids=str
)
@pytest.mark.parametrize(
    "layers,bidir,batch_first", [(1, False, False), (2, True, True), (2, False, True)]
)
@pytest.mark.parametrize("lengths", [[6, 6, 6, 6], [6, 2, 4, 2, 6, 4]], ids=["equal", "unequal"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
def test_baselines_packed_as_padded_calls_equal_torch_packed(
    monkeypatch, name, cls, layers, bidir, batch_first, lengths, with_h0
):
    """torch's packed path on CPU is quadratic in the steps (benchmarks/packed_baselines.py);
    grukit's baselines run a packed batch as padded calls instead (one per length, or one per
    layer-direction): outputs, h_n and every gradient equal torch's packed call, and the
    padded calls really ran."""
    import grukit.rnn

    calls = []
    for plan in ("_packed_padded", "_packed_by_layer"):
        real = getattr(grukit.rnn, plan)
        monkeypatch.setattr(
            grukit.rnn, plan, lambda *a, _r=real, _p=plan: calls.append(_p) or _r(*a)
        )
    dtype = torch.float64
    T, N, Hin, H = 6, len(lengths), 4, 3
    D = 2 if bidir else 1
    torch.manual_seed(7)
    theirs = cls(Hin, H, layers, batch_first=batch_first, bidirectional=bidir, dtype=dtype)
    ours = from_torch(theirs, variant=name, backend="torch" if name == "gru" else "auto")
    x = rand_input(T, N, Hin, dtype, batch_first)
    h0 = None
    if with_h0:
        h0 = rand_h0(layers, D, N, H, dtype)
        if name == "lstm":
            h0 = (h0, rand_h0(layers, D, N, H, dtype, seed=5))
    got, expected = run(ours, x, h0, lengths), run(theirs, x, h0, lengths)
    assert_same(got, expected, dtype, name)
    assert calls == ["_packed_by_layer" if len(set(lengths)) > 1 else "_packed_padded"]


def test_packed_baselines_choose_padded_calls_where_they_pay():
    from grukit.rnn import _packed_plan

    params = {"w": torch.zeros(1, requires_grad=True)}
    lstm = nn.LSTM(1, 2, device="meta")

    def packed(lengths):
        return pack_padded_sequence(torch.zeros(max(lengths), len(lengths), 1), lengths)

    assert _packed_plan(lstm, packed([784] * 4), params) == "padded"
    assert _packed_plan(lstm, packed([29, 20, 7]), params) == "layers"
    with torch.no_grad():  # torch's packed forward is fast; only its backward is not
        assert _packed_plan(lstm, packed([29, 20, 7]), params) == "packed"
        assert _packed_plan(lstm, packed([5] * 3), params) == "padded"


def test_packed_lstm_by_layer_trains_with_dropout_and_no_gradient_leaks_through_padding():
    """Training mode with dropout between layers runs; a sequence's gradients do not depend on
    the padding after it (the saturated gates pass exactly nothing back)."""
    torch.manual_seed(3)
    m = grukit.GRU(3, 4, 2, dropout=0.5, variant="lstm").double()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, [6, 3])
    out, (h, c) = m(packed)
    (out.data.sum() + h.sum() + c.sum()).backward()
    m.eval()
    grads = []
    for pad in (0.0, 1e3):  # what lies past the short sequence's end
        y = x.clone()
        y[3:, 1] = pad
        y.requires_grad_()
        out, (h, c) = m(pack_padded_sequence(y, [6, 3]))
        (out.data.sum() + h[:, 1].sum() + c[:, 1].sum()).backward()
        grads.append(y.grad[:3, 1].clone())
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("name,cls", [("lstm", nn.LSTMCell), ("rnn_tanh", nn.RNNCell)])
def test_baseline_cells_equal_torch(name, cls):
    torch.manual_seed(2)
    theirs = cls(3, 4)
    ours = grukit.GRUCell(3, 4, variant=name)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3)
    state = (torch.randn(2, 4), torch.randn(2, 4)) if name == "lstm" else torch.randn(2, 4)
    a, b = ours(x, state), theirs(x, state)
    for u, v in zip(a if name == "lstm" else (a,), b if name == "lstm" else (b,), strict=True):
        torch.testing.assert_close(u, v, atol=0, rtol=0)


def test_baseline_dropout_warning_given_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grukit.GRU(3, 4, 1, dropout=0.2, variant="lstm")
    assert len([w for w in caught if "dropout" in str(w.message)]) == 1
