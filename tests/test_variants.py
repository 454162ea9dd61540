"""Tests for grukit.variants and grukit.reference.cell_step: counts, names, the math, gate order.

The equations here are written from the ``equations`` strings of grukit/variants.py, block by
block, independently of ``cell_step``'s code (which slices fused gate blocks); comparing the two
pins both the math and the order of the blocks inside each parameter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import grukit
from grukit.reference import cell_step
from grukit.variants import ALL_VARIANTS, BASELINES, VARIANTS, get_variant

VARIANT_NAMES = list(VARIANTS)
DT = torch.float64

# Where each named block sits: rows of weight_ih / weight_hh, entries of bias_ih / bias_hh, in
# order (torch.nn.GRU's convention: gates first, candidate last; a gate fed by neither x nor h has
# its bias in bias_hh). Written out by hand so that a change of layout in variants.py shows up.
LAYOUT: dict[str, dict[str, list[str]]] = {
    "gru": {
        "weight_ih": ["W_ir", "W_iz", "W_in"],
        "weight_hh": ["W_hr", "W_hz", "W_hn"],
        "bias_ih": ["b_ir", "b_iz", "b_in"],
        "bias_hh": ["b_hr", "b_hz", "b_hn"],
    },
    "gru_reset_before": {
        "weight_ih": ["W_ir", "W_iz", "W_in"],
        "weight_hh": ["W_hr", "W_hz", "W_hn"],
        "bias_ih": ["b_ir", "b_iz", "b_in"],
        "bias_hh": ["b_hr", "b_hz", "b_hn"],
    },
    "gru1": {
        "weight_ih": ["W_in"],
        "weight_hh": ["W_hr", "W_hz", "W_hn"],
        "bias_ih": ["b_in"],
        "bias_hh": ["b_hr", "b_hz", "b_hn"],
    },
    "gru2": {
        "weight_ih": ["W_in"],
        "weight_hh": ["W_hr", "W_hz", "W_hn"],
        "bias_ih": ["b_in"],
        "bias_hh": ["b_hn"],
    },
    "gru3": {
        "weight_ih": ["W_in"],
        "weight_hh": ["W_hn"],
        "bias_ih": ["b_in"],
        "bias_hh": ["b_r", "b_z", "b_hn"],
    },
    "mgu": {
        "weight_ih": ["W_if", "W_in"],
        "weight_hh": ["W_hf", "W_hn"],
        "bias_ih": ["b_if", "b_in"],
        "bias_hh": ["b_hf", "b_hn"],
    },
    "mgu1": {
        "weight_ih": ["W_in"],
        "weight_hh": ["W_hf", "W_hn"],
        "bias_ih": ["b_in"],
        "bias_hh": ["b_hf", "b_hn"],
    },
    "mgu2": {
        "weight_ih": ["W_in"],
        "weight_hh": ["W_hf", "W_hn"],
        "bias_ih": ["b_in"],
        "bias_hh": ["b_hn"],
    },
    "mgu3": {
        "weight_ih": ["W_in"],
        "weight_hh": ["W_hn"],
        "bias_ih": ["b_in"],
        "bias_hh": ["b_f", "b_hn"],
    },
    "mingru": {
        "weight_ih": ["W_iz", "W_in"],
        "bias_ih": ["b_iz", "b_in"],
    },
}


def test_layout_table_covers_every_variant():
    assert set(LAYOUT) == set(VARIANTS)
    assert set(ALL_VARIANTS) == set(VARIANTS) | set(BASELINES)
    assert set(BASELINES) == {"lstm", "rnn_tanh"}


def blocks_of(name: str, params: dict[str, torch.Tensor], H: int) -> dict[str, torch.Tensor]:
    """Split the parameters of one layer-direction into named blocks (absent biases are 0)."""
    out: dict[str, torch.Tensor] = {}
    for kind, names in LAYOUT[name].items():
        if kind not in params:
            continue
        t = params[kind]
        assert t.shape[0] == len(names) * H, (name, kind, t.shape)
        for i, block in enumerate(names):
            out[block] = t[i * H : (i + 1) * H]
    for kind in ("bias_ih", "bias_hh"):
        for block in LAYOUT[name].get(kind, []):
            out.setdefault(block, torch.zeros(H, dtype=DT))
    return out


def sigma(a):
    return torch.sigmoid(a)


def lin(W, v):
    return v @ W.T


def g_min(a):
    """minGRU's g: a + 1/2 for a >= 0, sigma(a) below."""
    return torch.where(a >= 0, a + 0.5, 1.0 / (1.0 + torch.exp(-a)))


def hand_step(name: str, x: torch.Tensor, h: torch.Tensor, p: dict[str, torch.Tensor]):
    """One step of each variant, written from its ``equations`` string."""
    if name == "gru":
        r = sigma(lin(p["W_ir"], x) + p["b_ir"] + lin(p["W_hr"], h) + p["b_hr"])
        z = sigma(lin(p["W_iz"], x) + p["b_iz"] + lin(p["W_hz"], h) + p["b_hz"])
        n = torch.tanh(lin(p["W_in"], x) + p["b_in"] + r * (lin(p["W_hn"], h) + p["b_hn"]))
        return (1 - z) * n + z * h
    if name == "gru_reset_before":
        r = sigma(lin(p["W_ir"], x) + p["b_ir"] + lin(p["W_hr"], h) + p["b_hr"])
        z = sigma(lin(p["W_iz"], x) + p["b_iz"] + lin(p["W_hz"], h) + p["b_hz"])
    elif name == "gru1":
        r = sigma(lin(p["W_hr"], h) + p["b_hr"])
        z = sigma(lin(p["W_hz"], h) + p["b_hz"])
    elif name == "gru2":
        r = sigma(lin(p["W_hr"], h))
        z = sigma(lin(p["W_hz"], h))
    elif name == "gru3":
        r = sigma(p["b_r"]).expand_as(h)
        z = sigma(p["b_z"]).expand_as(h)
    elif name in ("mgu", "mgu1", "mgu2", "mgu3"):
        if name == "mgu":
            f = sigma(lin(p["W_if"], x) + p["b_if"] + lin(p["W_hf"], h) + p["b_hf"])
        elif name == "mgu1":
            f = sigma(lin(p["W_hf"], h) + p["b_hf"])
        elif name == "mgu2":
            f = sigma(lin(p["W_hf"], h))
        else:
            f = sigma(p["b_f"]).expand_as(h)
        n = torch.tanh(lin(p["W_in"], x) + p["b_in"] + lin(p["W_hn"], f * h) + p["b_hn"])
        return (1 - f) * h + f * n
    elif name == "mingru":
        z = sigma(lin(p["W_iz"], x) + p["b_iz"])
        n = g_min(lin(p["W_in"], x) + p["b_in"])
        return (1 - z) * h + z * n
    else:
        raise AssertionError(name)
    # reset before the recurrent matmul (Cho et al. 2014)
    n = torch.tanh(lin(p["W_in"], x) + p["b_in"] + lin(p["W_hn"], r * h) + p["b_hn"])
    return (1 - z) * n + z * h


def seeded_params(name: str, Hin: int, H: int, bias: bool, seed: int, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    shapes = get_variant(name).parameter_shapes(Hin, H, bias)
    return {k: (torch.rand(s, generator=gen, dtype=DT) * 2 - 1) * scale for k, s in shapes.items()}


# -- parameter shapes, names, counts ------------------------------------------------------


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_shapes_follow_the_layout(name, bias):
    Hin, H = 5, 3
    shapes = get_variant(name).parameter_shapes(Hin, H, bias)
    expected = {}
    for kind, blocks in LAYOUT[name].items():
        if kind.startswith("bias") and not bias:
            continue
        expected[kind] = (len(blocks) * H,) + (
            (Hin if kind == "weight_ih" else H,) if kind[0] == "w" else ()
        )
    assert shapes == expected


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variant_closed_form_count_by_hand(name):
    """Gx*n*m + Gh*n^2 + B*n, counted from the hand-written layout table."""
    m, n = 7, 4
    layout = LAYOUT[name]
    gx = len(layout["weight_ih"])
    gh = len(layout.get("weight_hh", []))
    nb = len(layout.get("bias_ih", [])) + len(layout.get("bias_hh", []))
    v = get_variant(name)
    assert v.count_parameters(m, n, True) == gx * n * m + gh * n * n + nb * n
    assert v.count_parameters(m, n, False) == gx * n * m + gh * n * n


def test_gru_closed_form_is_torchs():
    for m, n in [(1, 1), (3, 5), (10, 7)]:
        assert get_variant("gru").count_parameters(m, n) == 3 * (n * n + n * m + 2 * n)


COUNT_CASES = [
    (layers, bidir, bias)
    for layers in (1, 2, 3)
    for bidir in (False, True)
    for bias in (True, False)
]


@pytest.mark.parametrize("name", list(ALL_VARIANTS))
@pytest.mark.parametrize("layers,bidir,bias", COUNT_CASES)
def test_count_parameters_matches_module(name, layers, bidir, bias):
    if not bias and name in VARIANTS and VARIANTS[name].needs_bias:
        pytest.skip("variant needs bias")
    Hin, H = 5, 3  # input size != hidden size, and != D * H
    m = grukit.GRU(
        Hin,
        H,
        layers,
        bias=bias,
        bidirectional=bidir,
        variant=name,
        backend="reference" if name in VARIANTS else "auto",
    )
    actual = sum(p.numel() for p in m.parameters())
    closed = grukit.count_parameters(name, Hin, H, layers, bidir, bias)
    assert closed == actual, f"{name}: closed form {closed} != {actual} parameters"
    if name in VARIANTS:  # the per-layer closed form, summed by hand
        D = 2 if bidir else 1
        v = VARIANTS[name]
        by_layer = sum(
            D * v.count_parameters(Hin if k == 0 else D * H, H, bias) for k in range(layers)
        )
        assert by_layer == actual


@pytest.mark.parametrize("name,cls", [("gru", nn.GRU), ("lstm", nn.LSTM), ("rnn_tanh", nn.RNN)])
@pytest.mark.parametrize("layers,bidir,bias", COUNT_CASES)
def test_parameter_names_and_shapes_match_torch(name, cls, layers, bidir, bias):
    Hin, H = 5, 3
    ours = grukit.GRU(Hin, H, layers, bias=bias, bidirectional=bidir, variant=name)
    theirs = cls(Hin, H, layers, bias=bias, bidirectional=bidir)
    ours_shapes = [(k, tuple(p.shape)) for k, p in ours.named_parameters()]
    theirs_shapes = [(k, tuple(p.shape)) for k, p in theirs.named_parameters()]
    assert ours_shapes == theirs_shapes
    assert grukit.count_parameters(name, Hin, H, layers, bidir, bias) == sum(
        p.numel() for p in theirs.parameters()
    )


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("bias", [True, False])
def test_module_parameter_shapes_match_variant(name, bias):
    if not bias and VARIANTS[name].needs_bias:
        pytest.skip("variant needs bias")
    Hin, H = 5, 3
    m = grukit.GRU(Hin, H, 2, bias=bias, bidirectional=True, variant=name, backend="reference")
    params = dict(m.named_parameters())
    for layer in range(2):
        for suffix in ("", "_reverse"):
            inp = Hin if layer == 0 else 2 * H
            for kind, shape in VARIANTS[name].parameter_shapes(inp, H, bias).items():
                assert tuple(params.pop(f"{kind}_l{layer}{suffix}").shape) == shape
    assert params == {}, f"unexpected parameters: {list(params)}"


def test_needs_bias_flags():
    assert {n for n, v in VARIANTS.items() if v.needs_bias} == {"gru3", "mgu3"}


def test_families_and_reset():
    assert {n for n, v in VARIANTS.items() if v.reset == "after"} == {"gru"}
    assert {n for n, v in VARIANTS.items() if v.family == "mgu"} == {"mgu", "mgu1", "mgu2", "mgu3"}
    assert VARIANTS["mingru"].family == "mingru" and not VARIANTS["mingru"].has_recurrent_weights


# -- the math: cell_step against the equations ------------------------------------------


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N", [1, 3])
def test_cell_step_matches_equations(name, bias, N):
    if not bias and VARIANTS[name].needs_bias:
        pytest.skip("variant needs bias")
    Hin, H = 4, 5
    v = get_variant(name)
    params = seeded_params(name, Hin, H, bias, seed=11, scale=1.5)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(N, Hin, generator=gen, dtype=DT)
    h = torch.randn(N, H, generator=gen, dtype=DT)
    expected = hand_step(name, x, h, blocks_of(name, params, H))
    gx = F.linear(x, params["weight_ih"], params.get("bias_ih"))
    got = cell_step(v, gx, h, params.get("weight_hh"), params.get("bias_hh"))
    diff = (got - expected).abs().max().item()
    print(f"{name}: max abs diff {diff:.3g}")
    assert got.shape == (N, H)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_gru_cell_module_matches_equations(name):
    """The whole module stack (GRUCell, reference backend) computes the same equations."""
    Hin, H, N = 3, 4, 2
    torch.manual_seed(5)
    cell = grukit.GRUCell(Hin, H, variant=name, backend="reference", dtype=DT)
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-1.5, 1.5)
    x = torch.randn(N, Hin, dtype=DT)
    h = torch.randn(N, H, dtype=DT)
    params = {k: p.detach() for k, p in cell.named_parameters()}
    expected = hand_step(name, x, h, blocks_of(name, params, H))
    torch.testing.assert_close(cell(x, h), expected, atol=1e-12, rtol=1e-12)


def test_hand_equations_are_sensitive_to_gate_order():
    """Control: swapping r and z in gru's parameters changes the result (so the test can fail)."""
    Hin, H = 3, 4
    params = seeded_params("gru", Hin, H, True, seed=3, scale=2.0)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, Hin, generator=gen, dtype=DT)
    h = torch.randn(2, H, generator=gen, dtype=DT)
    swapped = {k: torch.cat([t[H : 2 * H], t[:H], t[2 * H :]]) for k, t in params.items()}
    v = get_variant("gru")
    a = cell_step(
        v,
        F.linear(x, params["weight_ih"], params["bias_ih"]),
        h,
        params["weight_hh"],
        params["bias_hh"],
    )
    b = cell_step(
        v,
        F.linear(x, swapped["weight_ih"], swapped["bias_ih"]),
        h,
        swapped["weight_hh"],
        swapped["bias_hh"],
    )
    assert (a - b).abs().max() > 1e-3


def test_gru_reset_after_differs_from_reset_before():
    Hin, H = 3, 4
    params = seeded_params("gru", Hin, H, True, seed=8, scale=1.5)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, Hin, generator=gen, dtype=DT)
    h = torch.randn(2, H, generator=gen, dtype=DT)
    gx = F.linear(x, params["weight_ih"], params["bias_ih"])
    a = cell_step(get_variant("gru"), gx, h, params["weight_hh"], params["bias_hh"])
    b = cell_step(get_variant("gru_reset_before"), gx, h, params["weight_hh"], params["bias_hh"])
    assert (a - b).abs().max() > 1e-4


def test_gru_cell_step_is_torch_gru_cell():
    Hin, H = 3, 5
    torch.manual_seed(0)
    ref = nn.GRUCell(Hin, H, dtype=DT)
    x = torch.randn(4, Hin, dtype=DT)
    h = torch.randn(4, H, dtype=DT)
    gx = F.linear(x, ref.weight_ih, ref.bias_ih)
    got = cell_step(get_variant("gru"), gx, h, ref.weight_hh, ref.bias_hh)
    torch.testing.assert_close(got, ref(x, h), atol=1e-12, rtol=1e-12)


# -- the update-gate convention -------------------------------------------------------------

# (the update gate's block name, its pre-activation value that keeps the state)
KEEP = {
    "gru": ("z", +40.0),
    "gru_reset_before": ("z", +40.0),
    "gru1": ("z", +40.0),
    "gru2": ("z", +40.0),
    "gru3": ("z", +40.0),
    "mgu": ("f", -40.0),
    "mgu1": ("f", -40.0),
    "mgu2": ("f", -40.0),
    "mgu3": ("f", -40.0),
    "mingru": ("z", -40.0),
}


def _set_update_gate(name: str, params: dict[str, torch.Tensor], h: torch.Tensor, value: float):
    """Make the update gate's pre-activation equal ``value`` for every unit (batch of 1)."""
    H = h.shape[-1]
    gate, _ = KEEP[name]
    params = {k: t.clone() for k, t in params.items()}
    found: dict[str, int] = {}  # parameter kind -> index of the gate's block in it
    for kind, blocks in LAYOUT[name].items():
        for i, block in enumerate(blocks):
            if block[-1] == gate and kind in params:
                params[kind][i * H : (i + 1) * H] = 0.0
                found[kind] = i
    bias_kinds = [k for k in ("bias_ih", "bias_hh") if k in found]
    if bias_kinds:
        i = found[bias_kinds[0]]
        params[bias_kinds[0]][i * H : (i + 1) * H] = value
    else:  # a gate from the state alone (gru2, mgu2): every row of W_h = value * h / |h|^2
        i = found["weight_hh"]
        row = value * h[0] / (h[0] @ h[0])
        params["weight_hh"][i * H : (i + 1) * H] = row.expand(H, H)
    return params


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_update_gate_convention(name):
    Hin, H = 3, 4
    v = get_variant(name)
    params = seeded_params(name, Hin, H, True, seed=21, scale=1.0)
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(1, Hin, generator=gen, dtype=DT)
    h = torch.randn(1, H, generator=gen, dtype=DT)
    _, keep = KEEP[name]

    def step(p):
        gx = F.linear(x, p["weight_ih"], p.get("bias_ih"))
        return cell_step(v, gx, h, p.get("weight_hh"), p.get("bias_hh"))

    kept = step(_set_update_gate(name, params, h, keep))
    written = step(_set_update_gate(name, params, h, -keep))
    print(name, "kept", (kept - h).abs().max().item(), "written", (written - h).abs().max().item())
    torch.testing.assert_close(kept, h, atol=1e-12, rtol=0)
    assert (written - h).abs().max() > 1e-2, f"{name}: the opposite gate value kept the state too"
    # with the gate fully open for writing, h' is the candidate: same as the hand equations
    expected = hand_step(name, x, h, blocks_of(name, _set_update_gate(name, params, h, -keep), H))
    torch.testing.assert_close(written, expected, atol=1e-12, rtol=1e-12)


def test_get_variant_rejects_baselines_and_unknown():
    with pytest.raises(ValueError, match="baseline"):
        get_variant("lstm")
    with pytest.raises(ValueError, match="valid variants are"):
        get_variant("gru4")
