"""Single-product GFLOP/s of MKL (through at::mm) against oneDNN (at::native::mkldnn_matmul,
which libtorch_cpu exports) and oneDNN's brgemm micro-kernel (at::native::cpublas::brgemm, the
fused kernels' ``brgemm`` provider) at the shapes of the fused kernels' GEMM blocks, in one
process; with ``--steps``, the fused ``gru`` training step at S1-S5 under each provider of
``grukit.fused.set_gemm_provider``, interleaved (median of the rounds).

    python benchmarks/gemm_providers.py --threads 1
    python benchmarks/gemm_providers.py --steps [--threads 2] [--rounds 7]

The kernels run every GEMM block on one thread, so ``--threads 1`` is the comparison that
matters for them; ``--threads 2`` shows what each library does with the whole machine (which is
where oneDNN's "twice MKL" on AMD came from: two threads against one). Each shape's result is
the best of three timed loops; the products of the two are checked to agree.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.cpp_extension import load_inline

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>
namespace at { namespace native {
TORCH_API void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2,
                             const at::Tensor& result, float beta, float alpha);
}}
void onednn_mm(at::Tensor a, at::Tensor b, at::Tensor c, int64_t reps) {
  for (int64_t i = 0; i < reps; ++i) at::native::mkldnn_matmul(a, b, c, 0.0f, 1.0f);
}
void aten_mm(at::Tensor a, at::Tensor b, at::Tensor c, int64_t reps) {
  for (int64_t i = 0; i < reps; ++i) at::mm_out(c, a, b);
}
void brgemm_mm(at::Tensor a, at::Tensor b, at::Tensor c, int64_t reps) {  // b as stored (K, N)
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  for (int64_t i = 0; i < reps; ++i)
    at::native::cpublas::brgemm(M, N, K, K, N, N, false, a.data_ptr<float>(),
                                b.data_ptr<float>(), c.data_ptr<float>(), false);
}
"""

#: (M, N, K, B transposed): per-step blocks of S4/S5, an input-projection block, a weight
#: gradient, a tiny step (S2), and whole products of S4/S5.
SHAPES = [
    (256, 96, 256, True), (64, 256, 128, False), (32, 768, 256, True), (16, 138, 46, True),
    (400, 768, 88, True), (768, 256, 340, False), (3200, 768, 88, True), (256, 768, 256, True),
]  # fmt: skip


def products(threads: int) -> None:
    """GFLOP/s of one product per library at each of :data:`SHAPES`, best of three loops."""
    ext = load_inline(
        "grukit_gemm_probe", cpp_sources=SOURCE, functions=["onednn_mm", "aten_mm", "brgemm_mm"]
    )
    torch.set_num_threads(threads)
    print(f"{threads} thread(s); GFLOP/s, best of 3 (brgemm: one thread, B as stored)")
    print("| M x N x K | MKL (at::mm) | oneDNN matmul | brgemm | brgemm / MKL |")
    print("|---|---:|---:|---:|---:|")
    for M, N, K, tb in SHAPES:
        a = torch.randn(M, K)
        b = torch.randn(N, K).t() if tb else torch.randn(K, N)
        b_plain = b.contiguous()
        c1, c2, c3 = torch.empty(M, N), torch.empty(M, N), torch.empty(M, N)
        ext.aten_mm(a, b, c1, 1)
        ext.onednn_mm(a, b, c2, 1)
        ext.brgemm_mm(a, b_plain, c3, 1)
        torch.testing.assert_close(c1, c2, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(c1, c3, rtol=1e-4, atol=1e-3)
        reps = max(5, int(2e9 / (2 * M * N * K)))
        best = {}
        runs = (("mkl", ext.aten_mm, b), ("onednn", ext.onednn_mm, b),
                ("brgemm", ext.brgemm_mm, b_plain))  # fmt: skip
        for name, fn, operand in runs:
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn(a, operand, c1, reps)
                times.append((time.perf_counter() - t) / reps)
            best[name] = 2 * M * N * K / min(times) / 1e9
        print(f"| {M} x {N} x {K} | {best['mkl']:.0f} | {best['onednn']:.0f} | "
              f"{best['brgemm']:.0f} | {best['brgemm'] / best['mkl']:.2f} |")  # fmt: skip


def steps(threads: int, rounds: int) -> None:
    """Milliseconds per fused ``gru`` training step (forward, loss, backward) at S1-S5 under
    each GEMM provider, the providers interleaved in a new order each round; the median."""
    import random
    import statistics

    import grukit
    import grukit.fused
    from grukit.bench import SHAPES as STEP_SHAPES
    from grukit.bench import machine_line

    torch.set_num_threads(threads)
    print(machine_line())
    providers = ["blas"] + (["brgemm"] if grukit.fused.info()["brgemm_available"] else [])
    print("| shape | " + " | ".join(f"{p} ms" for p in providers) + " | brgemm / blas |")
    print("|---|" + "---:|" * (len(providers) + 1))
    for shape in STEP_SHAPES.values():
        torch.manual_seed(0)
        m = grukit.GRU(shape.input, shape.hidden, backend="fused")
        x = torch.randn(shape.steps, shape.batch, shape.input)
        reps = max(1, int(2e7 / (shape.steps * shape.batch * shape.hidden * shape.hidden)))

        def step(m: torch.nn.Module = m, x: torch.Tensor = x) -> None:
            out, h = m(x)
            (out.sum() + h.sum()).backward()

        times: dict[str, list[float]] = {p: [] for p in providers}
        for p in providers:  # warm up: brgemm compiles its kernels on first use
            grukit.fused.set_gemm_provider(p)
            step()
        for _ in range(rounds):
            for p in random.sample(providers, len(providers)):
                grukit.fused.set_gemm_provider(p)
                t = time.perf_counter()
                for _ in range(reps):
                    step()
                times[p].append((time.perf_counter() - t) / reps * 1e3)
        med = {p: statistics.median(v) for p, v in times.items()}
        ratio = f"{med['brgemm'] / med['blas']:.2f}" if "brgemm" in med else "-"
        print(
            f"| {shape} | " + " | ".join(f"{med[p]:.2f}" for p in providers) + f" | {ratio} |",
            flush=True,
        )
    grukit.fused.set_gemm_provider("auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", action="store_true", help="time the fused training step")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.steps:
        steps(args.threads, args.rounds)
    else:
        products(args.threads)


if __name__ == "__main__":
    main()
