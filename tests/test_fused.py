"""The fused C++ kernels (grukit/fused.py, csrc/fused_rnn.cpp) against the reference.

Each comparison runs the same weights through backend="fused" and backend="reference" and checks
outputs, h_n and the gradients of the input, h0 and every parameter: float32 to 1e-5 relative,
float64 to 1e-10.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import grukit
import grukit.fused
from grukit.variants import VARIANTS

VARIANT_NAMES = list(VARIANTS)
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}

# every test but the fallback ones needs the kernels (built here, once, at collection)
needs_fused = pytest.mark.skipif(
    not grukit.fused.available(),
    reason=f"fused kernels unavailable: {grukit.fused.unavailable_reason()}",
)


# -- helpers ---------------------------------------------------------------------------------


def _weights_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)


def run(module, x, h0=None, lengths=None, *, loss_on=("out", "hn")):
    """Forward, then the gradients of a random linear loss: a dict of tensors by name."""
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=module.batch_first, enforce_sorted=False)
    out, hn = module(inp, h0)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=module.batch_first)
    loss = out.new_zeros(())
    if "out" in loss_on:
        loss = loss + (out * _weights_like(out, 1)).sum()
    if "hn" in loss_on:
        loss = loss + (hn * _weights_like(hn, 2)).sum()
    wrt = {"input": x, **({} if h0 is None else {"h0": h0}), **dict(module.named_parameters())}
    wrt = {k: v for k, v in wrt.items() if v.requires_grad}
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    res = {"out": out.detach(), "hn": hn.detach()}
    for k, g in zip(wrt, grads, strict=True):
        res["grad " + k] = torch.zeros_like(wrt[k]) if g is None else g
    return res


def assert_close_all(got, expected, dtype, what=""):
    assert got.keys() == expected.keys()
    worst = max((got[k] - expected[k]).abs().max().item() for k in got)
    print(f"{what}: max abs diff over outputs and gradients {worst:.3g}")
    for k in got:
        torch.testing.assert_close(
            got[k], expected[k], **TOL[dtype], msg=lambda m, k=k: f"{what} {k}: {m}"
        )


def pair(
    name, Hin, H, layers=1, bidir=False, batch_first=False, bias=True, dtype=torch.float64, seed=0
):
    """(fused, reference) modules with the same seeded weights."""
    torch.manual_seed(seed)
    kw = {"num_layers": layers, "bias": bias, "batch_first": batch_first, "bidirectional": bidir}
    ref = grukit.GRU(Hin, H, variant=name, backend="reference", dtype=dtype, **kw)
    fused = grukit.GRU(Hin, H, variant=name, backend="fused", dtype=dtype, **kw)
    fused.load_state_dict(ref.state_dict())
    return fused, ref


def inputs(T, N, Hin, H, layers, D, dtype, batch_first=False, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = (N, T, Hin) if batch_first else (T, N, Hin)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    h0 = torch.randn(layers * D, N, H, generator=gen, dtype=torch.float64).to(dtype)
    return x, h0


# -- fused == reference -------------------------------------------------------------------------

# layers x directions x packed x h0 in full; batch_first and bias vary with them so that each
# takes both values for every (layers, directions) pair
CONFIGS = [
    (layers, bidir, packed, h0, (bidir + h0) % 2 == 1, (layers + packed + h0) % 2 == 0)
    for layers, bidir, packed, h0 in itertools.product(
        (1, 2), (False, True), (False, True), (True, False)
    )
]


@needs_fused
@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize(
    "layers,bidir,packed,with_h0,batch_first,bias",
    CONFIGS,
    ids=[
        f"L{a}-{'bi' if b else 'uni'}-{'packed' if c else 'padded'}-"
        f"{'h0' if d else 'no_h0'}-{'bf' if e else 'tf'}-{'b' if f else 'nob'}"
        for a, b, c, d, e, f in CONFIGS
    ],
)
def test_fused_equals_reference(name, layers, bidir, packed, with_h0, batch_first, bias):
    if not bias and VARIANTS[name].needs_bias:
        pytest.skip("variant needs bias")
    T, N, Hin, H = 5, 4, 3, 6
    D = 2 if bidir else 1
    lengths = [5, 2, 5, 1] if packed else None
    for dtype in (torch.float32, torch.float64):
        fused, ref = pair(
            name, Hin, H, layers, bidir, batch_first, bias, dtype, seed=layers + 3 * bidir
        )
        x, h0 = inputs(T, N, Hin, H, layers, D, dtype, batch_first)
        h0 = h0 if with_h0 else None
        assert_close_all(
            run(fused, x, h0, lengths), run(ref, x, h0, lengths), dtype, f"{name} {dtype}"
        )
        assert fused.last_backend == "fused" and ref.last_backend == "reference"


ODD = [  # Hin, H, T, N, bidir
    (1, 1, 1, 1, False),
    (1, 1, 4, 3, True),
    (1, 3, 6, 1, False),
    (2, 3, 1, 5, True),
    (3, 17, 3, 2, False),
    (5, 17, 1, 1, True),
    (1, 17, 7, 1, False),
    (4, 33, 2, 3, True),
]


@needs_fused
@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize(
    "Hin,H,T,N,bidir",
    ODD,
    ids=[f"in{a}-h{b}-T{c}-N{d}-{'bi' if e else 'uni'}" for a, b, c, d, e in ODD],
)
def test_fused_odd_sizes(name, Hin, H, T, N, bidir):
    D = 2 if bidir else 1
    for dtype in (torch.float32, torch.float64):
        fused, ref = pair(name, Hin, H, 1, bidir, dtype=dtype, seed=H)
        x, h0 = inputs(T, N, Hin, H, 1, D, dtype)
        assert_close_all(run(fused, x, h0), run(ref, x, h0), dtype, f"{name} H={H}")


@needs_fused
@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("loss_on", [("out",), ("hn",)], ids=["out_only", "hn_only"])
def test_fused_gradients_when_one_output_is_unused(name, loss_on):
    """Backward gets an undefined gradient for the unused output (out or h_n)."""
    fused, ref = pair(name, 3, 5, 2, True)
    x, h0 = inputs(4, 3, 3, 5, 2, 2, torch.float64)
    got = run(fused, x, h0, loss_on=loss_on)
    assert_close_all(got, run(ref, x, h0, loss_on=loss_on), torch.float64, name)
    assert got["grad input"].abs().sum() > 0


@needs_fused
@pytest.mark.parametrize("name", ["gru", "gru2", "mgu", "mingru"])
def test_fused_partial_requires_grad(name):
    """Frozen parameters and an input without gradient: the other gradients are unchanged."""
    fused, ref = pair(name, 3, 5, 2)
    for m in (fused, ref):
        m.weight_ih_l0.requires_grad_(False)
        m.bias_ih_l1.requires_grad_(False)
    x, h0 = inputs(4, 3, 3, 5, 2, 1, torch.float64)
    results = []
    for m in (fused, ref):
        h = h0.clone().requires_grad_()
        out, hn = m(x, h)  # x does not require grad
        loss = (out * _weights_like(out, 1)).sum() + (hn * _weights_like(hn, 2)).sum()
        trainable = [p for p in m.parameters() if p.requires_grad]
        results.append(torch.autograd.grad(loss, [h, *trainable]))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@needs_fused
def test_fused_non_contiguous_inputs():
    fused, ref = pair("gru", 4, 5, 2)
    x = torch.randn(3, 6, 4, dtype=torch.float64).transpose(0, 1)  # (T, N, H_in), strided
    assert not x.is_contiguous()
    h0 = torch.randn(3, 2, 5, dtype=torch.float64).transpose(0, 1)
    assert not h0.is_contiguous()
    assert_close_all(run(fused, x, h0), run(ref, x, h0), torch.float64, "strided")


@needs_fused
@pytest.mark.parametrize("kind", ["broadcast", "transposed"])
@pytest.mark.parametrize("D", [1, 2])
def test_fused_takes_upstream_gradients_of_any_strides(kind, D):
    """The kernel's backward copies the incoming gradients itself: a loss's broadcast scalar
    (stride 0, what out.sum() sends) or a transposed tensor give the reference's gradients."""
    fused, ref = pair("gru", 4, 5, 1, bidir=D == 2)
    x, h0 = inputs(6, 3, 4, 5, 1, D, torch.float64)
    if kind == "broadcast":
        g_out = torch.tensor(0.7, dtype=torch.float64).expand(6, 3, 5 * D)
        g_hn = torch.tensor(-1.3, dtype=torch.float64).expand(D, 3, 5)
    else:
        g_out = torch.randn(5 * D, 3, 6, dtype=torch.float64).permute(2, 1, 0)
        g_hn = torch.randn(5, 3, D, dtype=torch.float64).permute(2, 1, 0)
    assert not g_out.is_contiguous() and not g_hn.is_contiguous()
    grads = []
    for module in (fused, ref):
        xi = x.clone().requires_grad_()
        out, hn = module(xi, h0)
        wrt = [xi, *module.parameters()]
        grads.append(torch.autograd.grad((out, hn), wrt, (g_out, g_hn)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@needs_fused
@pytest.mark.parametrize("backend", ["fused", "auto"])
def test_double_backward_is_right_or_loud(backend):
    """A gradient penalty (create_graph=True, then backward through the gradient), which
    torch.nn.GRU supports: the fused path must either give the reference's parameter gradients
    or raise; it must not silently drop the second-order terms."""
    torch.manual_seed(0)
    ref = grukit.GRU(2, 3, backend="reference", dtype=torch.float64)
    m = grukit.GRU(2, 3, backend=backend, dtype=torch.float64)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 2, dtype=torch.float64)

    def penalised_weight_grad(mod):
        xi = x.clone().requires_grad_()
        out, _ = mod(xi)
        (gx,) = torch.autograd.grad(out.sum(), xi, create_graph=True)
        loss = out.pow(2).sum() + 10 * gx.pow(2).sum()  # gradient penalty
        loss.backward()
        return mod.weight_hh_l0.grad.clone()

    grads = {"ref": penalised_weight_grad(ref)}
    try:
        grads["fused"] = penalised_weight_grad(m)
    except RuntimeError as exc:  # loud is acceptable
        print("raised:", exc)
        return
    assert m.last_backend == "fused"
    diff = (grads["fused"] - grads["ref"]).abs().max().item()
    print(f"weight_hh gradient with a gradient penalty: max abs diff {diff:.3g}")
    assert diff < 1e-10, (
        f"BUG grukit/fused.py (_FusedLayer.backward, @once_differentiable): with "
        f"backend={backend!r}, torch.autograd.grad(..., create_graph=True) returns a gradient "
        "that does not require grad, so a gradient penalty's second-order terms are silently "
        f"dropped (weight_hh gradient off by {diff:.3g}); torch.nn.GRU and the reference "
        "backend compute them. Raise in backward when grad mode is on, or differentiate it."
    )


# -- gradcheck through the fused path ---------------------------------------------------------


def _gradcheck(module, x, h0, lengths=None):
    names = [k for k, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, h0, *ps):
        inp = x
        if lengths is not None:
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, hn = torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (inp, h0))
        if isinstance(out, PackedSequence):
            out = out.data
        return out, hn

    return torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7)


@needs_fused
@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_fused(name, bidir, packed):
    torch.manual_seed(0)
    H, T, N, Hin = 3, 3, 3 if packed else 2, 2
    m = grukit.GRU(Hin, H, bidirectional=bidir, variant=name, backend="fused", dtype=torch.float64)
    x = torch.randn(T, N, Hin, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 if bidir else 1, N, H, dtype=torch.float64, requires_grad=True)
    lengths = [2, 3, 1] if packed else None
    assert _gradcheck(m, x, h0, lengths)
    assert m.last_backend == "fused"


# -- determinism across thread counts -----------------------------------------------------------


# The kernel's three ways of using threads, by shape (see fused_rnn.cpp):
#   "split":    a step is big enough to split its GEMMs and element-wise passes (N*H > 8192);
#   "blocks":   small steps, 32 or more rows: two fixed row blocks run the recurrence apart;
#   "overlap":  small steps, fewer rows: backward computes a chunk's weight gradients on a
#               second thread while the first runs the next chunk's recursion (and
#               the chunk's dx products on whichever thread claims them first);
#   "row":      batch 1 with a large hidden size: a step's product of the one row with a weight
#               splits its outputs between the threads (each output one dot product).
THREADING_SHAPES = {
    "split": (64, 20, 40, 130),
    "blocks": (40, 30, 7, 48),
    "overlap": (12, 60, 9, 40),
    "row": (1, 4, 9, 520),
}


@needs_fused
@pytest.mark.parametrize("path", list(THREADING_SHAPES))
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_bitwise_identical_across_thread_counts(name, path, restore_threads):
    """Each threading path, packed and bidirectional: bit-identical results with 1 and 2
    threads (every split depends on the shape only, every sum runs in a fixed order)."""
    N, T, Hin, H = THREADING_SHAPES[path]
    torch.manual_seed(5)
    m = grukit.GRU(Hin, H, bidirectional=True, variant=name, backend="fused")
    x = torch.randn(T, N, Hin)
    h0 = torch.randn(2, N, H)
    lengths = ([T] * 40 + [T - 3] * 10 + [1 + i % T for i in range(N)])[:N]
    results = {}
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        results.setdefault(threads, []).append((run(m, x, h0), run(m, x, h0, lengths)))
    (a_pad, a_packed), (c_pad, c_packed) = results[1]
    ((b_pad, b_packed),) = results[2]
    for ref, other in ((a_pad, b_pad), (a_packed, b_packed), (a_pad, c_pad)):
        for k in ref:
            assert torch.equal(ref[k], other[k]), f"{name}: {k} differs between 1 and 2 threads"


@needs_fused
@pytest.mark.parametrize("path", list(THREADING_SHAPES))
@pytest.mark.parametrize("name", ["gru", "gru_reset_before", "mgu", "mingru"])
def test_threading_paths_equal_reference(name, path, restore_threads):
    """The shapes of the thread test, with 2 threads, against the reference (one variant per
    cell kind): each threading path computes the right thing, packed and bidirectional."""
    torch.set_num_threads(2)
    N, T, Hin, H = THREADING_SHAPES[path]
    fused, ref = pair(name, Hin, H, 1, True, dtype=torch.float64, seed=6)
    x, h0 = inputs(T, N, Hin, H, 1, 2, torch.float64)
    lengths = ([T] * 40 + [T - 3] * 10 + [1 + i % T for i in range(N)])[:N]
    assert_close_all(run(fused, x, h0, lengths), run(ref, x, h0, lengths), torch.float64, name)


@needs_fused
def test_fused_call_keeps_torch_thread_settings(restore_threads):
    """The kernel lowers BLAS to one thread while it runs; afterwards torch must have the thread
    count it had (a leak once left torch's own GRU/LSTM on one thread, 1.8x slower)."""
    for threads in (2, 1, 2):
        torch.set_num_threads(threads)
        for shape in THREADING_SHAPES.values():
            N, T, Hin, H = shape
            m = grukit.GRU(Hin, H, backend="fused")
            out, _ = m(torch.randn(T, N, Hin))
            out.sum().backward()
            assert torch.get_num_threads() == threads
        info = torch.__config__.parallel_info()
        if "mkl_get_max_threads" in info:
            assert f"mkl_get_max_threads() : {threads}" in info


# -- the fast path really runs ------------------------------------------------------------------


@needs_fused
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_auto_runs_the_fused_kernel_on_cpu_float32(name):
    m = grukit.GRU(3, 4, 2, bidirectional=True, variant=name)  # backend="auto"
    before = grukit.fused.call_count()
    m(torch.randn(5, 2, 3))
    assert m.last_backend == "fused"
    assert grukit.fused.call_count() > before


@needs_fused
def test_reference_backend_does_not_call_the_kernel():
    m = grukit.GRU(3, 4, backend="reference")
    before = grukit.fused.call_count()
    m(torch.randn(5, 2, 3))
    assert grukit.fused.call_count() == before and m.last_backend == "reference"


@needs_fused
def test_cell_auto_runs_the_fused_kernel():
    c = grukit.GRUCell(3, 4)
    before = grukit.fused.call_count()
    c(torch.randn(2, 3))
    assert grukit.fused.call_count() == before + 1 and c.last_backend == "fused"


@needs_fused
@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_inference_equals_training_forward(name, dtype):
    """Without a workspace (no_grad / inference_mode) the kernel takes another path."""
    torch.manual_seed(2)
    m = grukit.GRU(3, 17, 2, bidirectional=True, variant=name, backend="fused", dtype=dtype)
    x, h0 = inputs(6, 5, 3, 17, 2, 2, dtype)
    packed = pack_padded_sequence(x, [6, 3, 6, 1, 2], enforce_sorted=False)
    m.train()
    out_t, hn_t = m(x, h0)
    pout_t, phn_t = m(packed, h0)
    assert out_t.requires_grad
    m.eval()
    with torch.no_grad():
        out_n, hn_n = m(x, h0)
        pout_n, phn_n = m(packed, h0)
    with torch.inference_mode():
        out_i, hn_i = m(x, h0)
    for a, b in (
        (out_t, out_n),
        (hn_t, hn_n),
        (pout_t.data, pout_n.data),
        (phn_t, phn_n),
        (out_t, out_i),
        (hn_t, hn_i),
    ):
        print(f"{name}: max abs diff {(a - b).abs().max().item():.3g}")
        torch.testing.assert_close(a.detach(), b, atol=0, rtol=0)


@needs_fused
@pytest.mark.parametrize("backend", ["fused", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("H", [1, 17])
def test_gru_cell_fused_equals_torch(backend, dtype, H):
    torch.manual_seed(4)
    theirs = nn.GRUCell(3, H, dtype=dtype)
    ours = grukit.GRUCell(3, H, backend=backend, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 3, dtype=dtype)
    h = torch.randn(5, H, dtype=dtype)
    for args in ((x, h), (x,), (x[0], h[0])):
        res = []
        for m in (ours, theirs):
            leaves = [a.clone().requires_grad_() for a in args]
            out = m(*leaves)
            gs = torch.autograd.grad(
                (out * _weights_like(out, 7)).sum(), [*leaves, *m.parameters()]
            )
            res.append((out, *gs))
        for a, b in zip(*res, strict=True):
            torch.testing.assert_close(a, b, **TOL[dtype])
    assert ours.last_backend == "fused"


# -- fallback when the kernels are off or cannot be built -----------------------------------

_FALLBACK_SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import torch, grukit
    report = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        m = grukit.GRU(3, 4, 2)
        x = torch.randn(5, 2, 3)
        out1, _ = m(x)
        out2, _ = m(x)
        report["backend"] = m.last_backend
        c = grukit.GRUCell(3, 4)
        c(torch.randn(2, 3))
        report["cell_backend"] = c.last_backend
        mg = grukit.GRU(3, 4, variant="mingru")
        mg(x)
        report["mingru_backend"] = mg.last_backend
        ref = grukit.GRU(3, 4, 2, backend="reference")
        ref.load_state_dict(m.state_dict())
        report["equal_to_reference"] = bool(torch.equal(ref(x)[0], out1))
        report["calls"] = grukit.fused.call_count()
    report["runtime_warnings"] = [
        str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
    ]
    try:
        grukit.GRU(3, 4, backend="fused")(x)
        report["fused_error"] = None
    except RuntimeError as exc:
        report["fused_error"] = str(exc)
    print("REPORT" + json.dumps(report))
    """
)


def _run_fallback(env_update: dict[str, str]) -> dict:
    env = {**os.environ, **env_update}
    proc = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"subprocess crashed:\n{proc.stdout}\n{proc.stderr}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")]
    assert line, f"no report:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(line[-1][len("REPORT") :])


def test_fallback_when_disabled():
    report = _run_fallback({"GRUKIT_DISABLE_FUSED": "1"})
    assert report["backend"] == "reference"
    assert report["cell_backend"] == "reference"
    assert report["mingru_backend"] == "scan"
    assert report["equal_to_reference"]
    assert report["calls"] == 0
    assert report["runtime_warnings"] == []  # switched off on purpose: no warning
    assert report["fused_error"] is not None
    assert "backend='fused' cannot run" in report["fused_error"]
    assert "GRUKIT_DISABLE_FUSED" in report["fused_error"]


def test_fallback_when_the_build_fails(tmp_path):
    """An empty kernel cache and a compiler that does not exist: torch.utils.cpp_extension
    takes the compiler from $CXX, so the build fails. auto falls back with exactly one
    RuntimeWarning; an explicit backend="fused" raises and says why."""
    env = {"GRUKIT_CACHE": str(tmp_path / "cache"), "CXX": "/nonexistent/c++"}
    report = _run_fallback({**env, "GRUKIT_DISABLE_FUSED": ""})
    assert report["backend"] == "reference"
    assert report["cell_backend"] == "reference"
    assert report["mingru_backend"] == "scan"
    assert report["equal_to_reference"]
    assert report["calls"] == 0
    assert len(report["runtime_warnings"]) == 1, report["runtime_warnings"]
    assert "could not be built" in report["runtime_warnings"][0]
    assert "reference" in report["runtime_warnings"][0]
    err = report["fused_error"]
    assert err is not None and "backend='fused' cannot run" in err and "could not be built" in err
    assert not list((tmp_path / "cache").rglob("*.so")), "nothing should have been built"


@needs_fused
def test_available_in_this_process():
    assert grukit.fused.available()
    assert grukit.fused.unavailable_reason() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grukit.GRU(3, 4)(torch.randn(2, 1, 3))  # no warning when the kernels load


@needs_fused
def test_pooled_workspaces_are_not_shared_between_live_graphs():
    """Workspaces above 1 MB come from a pool of reused blocks; a block must go back only when
    its graph is freed. Two graphs alive at once, backward in the other order, one graph
    dropped and a third built in its place: every gradient equals the reference's."""
    N, T, Hin, H = THREADING_SHAPES["split"]  # workspace: 1280 rows x 5 x 130 floats = 3.3 MB
    fused, ref = pair("gru", Hin, H, 1, False, dtype=torch.float64, seed=8)
    xs = [torch.randn(T, N, Hin, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
          for s in range(3)]  # fmt: skip

    def grads(module, x, make_graph_only=False):
        out, h = module(x)
        loss = (out * out).sum() + h.sum()
        return loss if make_graph_only else torch.autograd.grad(loss, list(module.parameters()))

    expected = [grads(ref, x) for x in xs]
    first, second = grads(fused, xs[0], True), grads(fused, xs[1], True)
    got1 = torch.autograd.grad(second, list(fused.parameters()))
    del second  # its workspace returns to the pool ...
    third = grads(fused, xs[2], True)  # ... and this graph may take it
    got0 = torch.autograd.grad(first, list(fused.parameters()))
    got2 = torch.autograd.grad(third, list(fused.parameters()))
    for got, want, i in ((got0, expected[0], 0), (got1, expected[1], 1), (got2, expected[2], 2)):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=f"graph {i}")


def test_cache_key_covers_every_kernel_file(tmp_path):
    import shutil

    src = tmp_path / "csrc"
    shutil.copytree(grukit.fused._CSRC, src)
    assert {p.name for p in src.iterdir()} >= {"fused_rnn.cpp", "cells.h", "kernel_support.h"}
    key = grukit.fused.source_key(src, "build")
    for name in ("cells.h", "kernel_support.h", "fused_rnn.cpp"):
        path = src / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n// changed\n")
        assert grukit.fused.source_key(src, "build") != key, name
        path.write_bytes(original)
    assert grukit.fused.source_key(src, "build") == key
    assert grukit.fused.source_key(src, "other build") != key


@needs_fused
def test_fused_kernel_draws_no_random_numbers():
    m = grukit.GRU(3, 4, 2, bidirectional=True, recurrent_dropout=0.3, candidate_dropout=0.2,
                   zoneout=0.2, layer_norm=True, weight_drop=0.1, backend="fused")  # fmt: skip
    x = torch.randn(5, 2, 3)
    masks = m.draw_masks(x, torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    out, hn = m(x, masks=masks)
    (out.sum() + hn.sum()).backward()
    assert torch.equal(torch.get_rng_state(), state)
    assert m.last_backend == "fused"
