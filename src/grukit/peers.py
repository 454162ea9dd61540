"""Other libraries' GRUs on the benchmark's shapes, each timed in a process of its own.

``grukit bench --peers`` runs grukit's fused ``gru`` and ``torch.nn.LSTM`` here, then each peer
in a subprocess (``python -m grukit.peers PEER SPEC``) on the same weights and input:

- ``onnxruntime`` and ``openvino``: the forward pass (inference) of an ONNX ``GRU`` operator built
  from the layer's weights (ONNX orders the gates z, r, h; ``linear_before_reset=1`` is torch's
  reset-after cell);
- ``jax``: a training step (forward, ``sum`` of the outputs, gradients of every weight) of a
  ``lax.scan`` GRU under ``jax.jit``.

A subprocess loads its library alone (no thread pool of another library beside it), checks its
outputs against grukit's (1e-4) and prints the median of its timed rounds as JSON. A peer that
is not installed is reported as such (the ``bench`` extra installs onnx, onnxruntime, openvino
and jax).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PEERS", "onnx_gru_model", "run_peers"]

#: peer -> what it times
PEERS = {"onnxruntime": "forward", "openvino": "forward", "jax": "train"}


def onnx_gru_model(weights: dict[str, np.ndarray], steps: int, batch: int) -> bytes:
    """An ONNX model of one torch-convention GRU layer: x (T, N, I), h0 (1, N, H) -> y (T, 1,
    N, H); ``weights`` holds ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih``,
    ``bias_hh`` (3H) in torch's layout (:func:`grukit.export.gru_operator_model`)."""
    from grukit.export import gru_operator_model

    return gru_operator_model(weights, steps, batch).SerializeToString()


def _median_time(fn: Callable[[], object], rounds: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _onnxruntime(spec: dict, data: dict) -> tuple[Callable[[], Any], np.ndarray]:
    import onnxruntime as ort

    model = onnx_gru_model(data, spec["steps"], spec["batch"])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feed = {"x": data["x"], "h0": np.zeros((1, spec["batch"], spec["hidden"]), np.float32)}
    return (lambda: session.run(["y"], feed)), session.run(["y"], feed)[0][:, 0]


def _openvino(spec: dict, data: dict) -> tuple[Callable[[], Any], np.ndarray]:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gru.onnx"
        path.write_bytes(onnx_gru_model(data, spec["steps"], spec["batch"]))
        # float32 math: on CPUs with bf16 units OpenVINO would otherwise compute in bf16
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    feed = [data["x"], np.zeros((1, spec["batch"], spec["hidden"]), np.float32)]
    y = compiled.outputs[0]
    return (lambda: request.infer(feed)), request.infer(feed)[y][:, 0]


def _jax(spec: dict, data: dict) -> tuple[Callable[[], Any], np.ndarray]:
    import jax
    import jax.numpy as jnp

    params = {k: jnp.asarray(data[k]) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    x = jnp.asarray(data["x"])
    h0 = jnp.zeros((spec["batch"], spec["hidden"]), jnp.float32)

    def layer(p: dict, x: Any) -> Any:
        gx = x @ p["weight_ih"].T + p["bias_ih"]  # (T, N, 3H), all steps at once

        def cell(h: Any, g: Any) -> tuple[Any, Any]:
            gh = h @ p["weight_hh"].T + p["bias_hh"]
            xr, xz, xn = jnp.split(g, 3, axis=-1)
            hr, hz, hn = jnp.split(gh, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
            return h, h

        return jax.lax.scan(cell, h0, gx)[1]

    step = jax.jit(jax.value_and_grad(lambda p, x: layer(p, x).sum()))
    out = np.asarray(jax.jit(layer)(params, x))
    return (lambda: jax.block_until_ready(step(params, x))), out


_RUNNERS = {"onnxruntime": _onnxruntime, "openvino": _openvino, "jax": _jax}


def _worker(peer: str, spec_path: str) -> dict:
    """In the peer's own process: build, check against grukit's output, time."""
    spec = json.loads(Path(spec_path).read_text())
    with np.load(spec["data"]) as f:
        data = {k: f[k] for k in f.files}
    try:
        fn, out = _RUNNERS[peer](spec, data)
    except ImportError as e:
        return {"peer": peer, "error": f"not installed ({e.name or e})"}
    worst = float(np.abs(out - data["want"]).max())
    if not worst <= 1e-4:
        return {"peer": peer, "error": f"outputs differ from grukit's by {worst:.2g}"}
    return {"peer": peer, "mode": PEERS[peer], "median_s": _median_time(fn, spec["rounds"]),
            "max_abs_diff": worst}  # fmt: skip


def run_peers(
    weights: dict[str, np.ndarray],
    x: np.ndarray,
    want: np.ndarray,
    peers: list[str],
    rounds: int,
    timeout_s: float = 600.0,
) -> dict[str, dict]:
    """Each peer in a subprocess on these weights, input x (T, N, I) and grukit's output want
    (T, N, H); returns ``{peer: {"mode", "median_s"} or {"error"}}``."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        np.savez(data, x=x, want=want, **weights)
        T, N, _ = x.shape
        spec = {"data": str(data), "steps": T, "batch": N, "hidden": want.shape[2],
                "rounds": rounds}  # fmt: skip
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        for peer in peers:
            proc = subprocess.run(
                [sys.executable, "-m", "grukit.peers", peer, str(spec_path)],
                capture_output=True, text=True, timeout=timeout_s,
            )  # fmt: skip
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                results[peer] = {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
            else:
                results[peer] = json.loads(lines[-1])
    return results


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1], sys.argv[2])))
