"""The fused kernels' float GEMM providers (``grukit.fused.set_gemm_provider``): with each one
forced, fused equals the reference for every variant and is bit-identical across thread counts;
the provider in use is reported and really computes the products; bad names are refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_fused import THREADING_SHAPES, assert_close_all, inputs, pair, run

import grukit
import grukit.fused
from grukit.variants import VARIANTS

pytestmark = pytest.mark.skipif(
    not grukit.fused.available(), reason=f"fused kernels: {grukit.fused.unavailable_reason()}"
)
BRGEMM = grukit.fused.available() and grukit.fused.info()["brgemm_available"]
PROVIDERS = [
    "blas",
    pytest.param("brgemm", marks=pytest.mark.skipif(not BRGEMM, reason="brgemm does not run here")),
]


@pytest.fixture(params=PROVIDERS)
def provider(request):
    threads = torch.get_num_threads()
    grukit.fused.set_gemm_provider(request.param)
    yield request.param
    grukit.fused.set_gemm_provider("auto")
    torch.set_num_threads(threads)


def calls() -> dict[str, int]:
    return grukit.fused.info()["gemm_calls"]


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize(
    "layers,bidir,packed", [(1, False, False), (2, True, True), (2, False, True)], ids=str
)
def test_fused_equals_reference_with_each_provider(provider, name, layers, bidir, packed):
    """float32 to 1e-5 (brgemm computes float32 only; float64 stays on BLAS), at sizes where
    every product goes to the provider: outputs, h_n and every gradient."""
    T, N, Hin, H = 6, 5, 7, 24
    D = 2 if bidir else 1
    lengths = [6, 3, 6, 1, 4] if packed else None
    fused, ref = pair(name, Hin, H, layers, bidir, dtype=torch.float32, seed=layers + 3 * bidir)
    x, h0 = inputs(T, N, Hin, H, layers, D, torch.float32)
    before = calls()[provider]
    got = run(fused, x, h0, lengths)
    assert calls()[provider] > before, f"no product ran on {provider}"
    assert_close_all(got, run(ref, x, h0, lengths), torch.float32, f"{name} on {provider}")


@pytest.mark.parametrize("path", list(THREADING_SHAPES))
@pytest.mark.parametrize("name", ["gru", "gru_reset_before", "gru2", "mgu", "mingru"])
def test_bit_identical_across_thread_counts_with_each_provider(provider, name, path):
    N, T, Hin, H = THREADING_SHAPES[path]
    torch.manual_seed(5)
    m = grukit.GRU(Hin, H, bidirectional=True, variant=name, backend="fused")
    x, h0 = torch.randn(T, N, Hin), torch.randn(2, N, H)
    lengths = ([T] * 40 + [T - 3] * 10 + [1 + i % T for i in range(N)])[:N]
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append((run(m, x, h0), run(m, x, h0, lengths)))
    for a, b in zip(*results, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name} on {provider}: {k} differs with 2 threads"


@pytest.mark.skipif(not BRGEMM, reason="brgemm does not run here")
def test_the_providers_agree_to_rounding_and_brgemm_really_runs():
    torch.manual_seed(0)
    m = grukit.GRU(88, 256, num_layers=2, bidirectional=True)
    x = torch.randn(20, 16, 88)
    outs = {}
    for provider in ("blas", "brgemm"):
        grukit.fused.set_gemm_provider(provider)
        assert grukit.fused.gemm_provider() == provider
        before = calls()
        outs[provider] = run(m, x)
        after = calls()
        grew = {p for p in after if after[p] > before[p]}
        assert provider in grew, (provider, before, after)
        if provider == "blas":
            assert grew == {"blas"}, "a product went to brgemm under the BLAS provider"
    grukit.fused.set_gemm_provider("auto")
    assert_close_all(outs["brgemm"], outs["blas"], torch.float32, "brgemm against blas")


@pytest.mark.skipif(not BRGEMM, reason="brgemm does not run here")
@pytest.mark.parametrize("H,taken", [(24, True), (100, False)])
def test_weight_gradients_go_to_brgemm_only_for_a_narrow_b(H, taken):
    """The weight gradients A^T B take brgemm's (B^T A)^T path where B (the layer's inputs or
    states) is at most 64 wide, and BLAS where it is wider; either way they match BLAS."""
    torch.manual_seed(1)
    m = grukit.GRU(H, H)
    x = torch.randn(30, 8, H)
    grads = {}
    for provider in ("blas", "brgemm"):
        grukit.fused.set_gemm_provider(provider)
        before = grukit.fused.info()["brgemm_transposed_calls"]
        m.zero_grad()
        out, hn = m(x)
        (out.square().sum() + hn.sum()).backward()
        grew = grukit.fused.info()["brgemm_transposed_calls"] - before
        assert (grew > 0) == (taken and provider == "brgemm"), (provider, grew)
        grads[provider] = {k: p.grad.clone() for k, p in m.named_parameters()}
    grukit.fused.set_gemm_provider("auto")
    for k in grads["blas"]:
        torch.testing.assert_close(grads["brgemm"][k], grads["blas"][k], rtol=1e-4, atol=1e-4)


def test_float64_stays_on_blas(provider):
    m = grukit.GRU(5, 24, dtype=torch.float64)
    before = calls()["brgemm"]
    run(m, torch.randn(4, 3, 5, dtype=torch.float64))
    assert calls()["brgemm"] == before


def test_the_cpu_default_and_bad_names():
    grukit.fused.set_gemm_provider("auto")
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert grukit.fused.gemm_provider() == ("brgemm" if avx512 and BRGEMM else "blas")
    with pytest.raises(ValueError, match="GEMM provider must be one of"):
        grukit.fused.set_gemm_provider("mkl")


@pytest.mark.parametrize("choice", ["blas", "nonsense"])
def test_the_environment_variable_chooses_at_load(choice):
    script = "import grukit.fused as f; print(f.available(), f.unavailable_reason())\n"
    script += "print(f.gemm_provider() if f.available() else '-')"
    env = {**os.environ, "GRUKIT_GEMM": choice}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if choice == "blas":
        assert lines == ["True None", "blas"], done.stderr
    else:
        assert lines[0].startswith("False") and "GRUKIT_GEMM must be" in lines[0], done.stdout
