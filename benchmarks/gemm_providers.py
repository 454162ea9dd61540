"""Single-product GFLOP/s of MKL (through at::mm) against oneDNN (at::native::mkldnn_matmul,
which libtorch_cpu exports) at the shapes of the fused kernels' GEMM blocks, in one process.

    python benchmarks/gemm_providers.py --threads 1

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
"""

#: (M, N, K, B transposed): per-step blocks of S4/S5, an input-projection block, a weight
#: gradient, a tiny step (S2), and whole products of S4/S5.
SHAPES = [
    (256, 96, 256, True), (64, 256, 128, False), (32, 768, 256, True), (16, 138, 46, True),
    (400, 768, 88, True), (768, 256, 340, False), (3200, 768, 88, True), (256, 768, 256, True),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    ext = load_inline("grukit_gemm_probe", cpp_sources=SOURCE, functions=["onednn_mm", "aten_mm"])
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s); GFLOP/s, best of 3")
    print("| M x N x K | MKL (at::mm) | oneDNN | oneDNN / MKL |")
    print("|---|---:|---:|---:|")
    for M, N, K, tb in SHAPES:
        a = torch.randn(M, K)
        b = torch.randn(N, K).t() if tb else torch.randn(K, N)
        c1, c2 = torch.empty(M, N), torch.empty(M, N)
        ext.aten_mm(a, b, c1, 1)
        ext.onednn_mm(a, b, c2, 1)
        torch.testing.assert_close(c1, c2, rtol=1e-4, atol=1e-3)
        reps = max(5, int(2e9 / (2 * M * N * K)))
        best = {}
        for name, fn in (("mkl", ext.aten_mm), ("onednn", ext.onednn_mm)):
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn(a, b, c1, reps)
                times.append((time.perf_counter() - t) / reps)
            best[name] = 2 * M * N * K / min(times) / 1e9
        print(f"| {M} x {N} x {K} | {best['mkl']:.0f} | {best['onednn']:.0f} | "
              f"{best['onednn'] / best['mkl']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
