"""The fused kernel of another git revision against this checkout's, in one process.

    python benchmarks/kernel_ab.py --rev f65c4d4 --shapes S1,S2,S3,S4,S5 --variants gru,mgu
    python benchmarks/kernel_ab.py --rev HEAD --shapes S2,S4 --layer-norm

Builds the kernel sources of ``--rev`` (every file under ``src/grukit/csrc``) as a second
extension, its ops renamed to ``torch.ops.grukit_ab``, and times one layer's training step
(forward with the workspace, then backward) and its forward without a workspace through both,
interleaved round by round on the same inputs; prints the median time of this checkout's kernel
over the other's (below 1: this checkout is faster). The outputs of the two are checked equal
first (float32, 1e-5). Calls the ops directly, so Python overhead is the same for both.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import grukit
from grukit import fused
from grukit.bench import FUSED_WARMUP, SHAPES

ROOT = Path(__file__).resolve().parents[1]
CSRC = "src/grukit/csrc"


def build_revision(rev: str) -> None:
    """Compile ``rev``'s kernel sources with their op namespace renamed to ``grukit_ab``."""
    from torch.utils import cpp_extension

    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{rev}:{CSRC}"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="grukit_ab_"))
    digest = hashlib.sha256(rev.encode())
    for name in names:
        text = subprocess.run(
            ["git", "show", f"{rev}:{CSRC}/{name}"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        text = text.replace("TORCH_LIBRARY(grukit,", "TORCH_LIBRARY(grukit_ab,")
        text = text.replace("TORCH_LIBRARY_IMPL(grukit,", "TORCH_LIBRARY_IMPL(grukit_ab,")
        (tmp / name).write_text(text)
        digest.update(text.encode())
    isa, flags = fused._isa_flags()
    cflags = ["-O3", "-std=c++17", "-fopenmp", *flags]
    name = f"grukit_ab_{digest.hexdigest()[:12]}"
    build = fused.cache_dir() / name
    build.mkdir(parents=True, exist_ok=True)
    print(f"building {rev}'s kernel ({isa}) in {build} ...", flush=True)
    cpp_extension.load(
        name=name, sources=[str(tmp / "fused_rnn.cpp")], extra_cflags=cflags,
        extra_ldflags=["-fopenmp"], build_directory=str(build), is_python_module=False,
    )  # fmt: skip


def _layer_call(ns: object, v: grukit.Variant, x, h0, w, bs, save: bool, ln=()):
    spec = fused.kernel_spec(v)
    extra = (None, None, None, *ln) if ln else ()
    return ns.rnn_forward(x, h0, *w, bs, spec, False, save, *extra)


def _train_step(ns: object, n_needs: int, v, x, h0, w, bs, g_out, g_hn, ln=()):
    out, hn, ws = _layer_call(ns, v, x, h0, w, bs, True, ln)
    needs = [1] * n_needs
    extra = (None, None, None, *ln) if ln else ()
    return ns.rnn_backward(
        g_out, g_hn, x, h0, *w, ws, bs, fused.kernel_spec(v), False, needs, *extra
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--variants", default="gru,gru_reset_before,mgu,mingru")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--layer-norm", action="store_true", help="both kernels with layer norm (gains 1 +- 0.1)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not fused.available():
        raise SystemExit(f"the fused kernels are unavailable: {fused.unavailable_reason()}")
    build_revision(args.rev)
    ours, theirs = torch.ops.grukit, torch.ops.grukit_ab
    needs = {
        ns: 8 if "ln_ih" in str(ns.rnn_backward.default._schema) else 6 for ns in (ours, theirs)
    }
    print(f"this checkout / {args.rev}, median of {args.rounds} interleaved rounds "
          f"({torch.get_num_threads()} threads)")  # fmt: skip
    print("| variant | shape | training step | forward |")
    print("|---|---|---:|---:|")
    for vname in args.variants.split(","):
        v = grukit.get_variant(vname)
        for sname in args.shapes.split(","):
            s = SHAPES[sname]
            g = torch.Generator().manual_seed(0)
            shapes = v.parameter_shapes(s.input, s.hidden)
            w = [
                (torch.rand(shapes[k], generator=g) - 0.5) if k in shapes else None
                for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            x = torch.rand(s.steps * s.batch, s.input, generator=g) - 0.5
            h0 = torch.zeros(s.batch, s.hidden)
            bs = torch.full((s.steps,), s.batch, dtype=torch.long)
            ln: tuple = ()
            if args.layer_norm:
                m = grukit.GRU(s.input, s.hidden, variant=vname, layer_norm=True)
                ln = tuple(
                    1 + 0.2 * (torch.rand(p.shape, generator=g) - 0.5)
                    for name, p in m.named_parameters()
                    if name.startswith("layer_norm")
                )
                if len(ln) == 1:  # minGRU: no recurrent block
                    ln = (ln[0], None)
            g_out = torch.rand(s.steps * s.batch, s.hidden, generator=g)
            g_hn = torch.rand(s.batch, s.hidden, generator=g)
            a = _layer_call(ours, v, x, h0, w, bs, False, ln)[0]
            b = _layer_call(theirs, v, x, h0, w, bs, False, ln)[0]
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            times: dict = {(ns, mode): [] for ns in (ours, theirs) for mode in ("train", "fwd")}
            # the first rounds warm up (and let the adaptive thread choice settle)
            for _ in range(args.rounds + FUSED_WARMUP):
                for ns in (ours, theirs):
                    t = time.perf_counter()
                    _train_step(ns, needs[ns], v, x, h0, w, bs, g_out, g_hn, ln)
                    times[(ns, "train")].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    _layer_call(ns, v, x, h0, w, bs, False, ln)
                    times[(ns, "fwd")].append(time.perf_counter() - t)
            ratio = {
                m: statistics.median(times[(ours, m)][FUSED_WARMUP:])
                / statistics.median(times[(theirs, m)][FUSED_WARMUP:])
                for m in ("train", "fwd")
            }
            print(f"| {vname} | {sname} | {ratio['train']:.3f} | {ratio['fwd']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
