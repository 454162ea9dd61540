"""ONNX export: a ``grukit.GRU`` or a whole task model as an ONNX graph built from its weights.

The graph is written with ``onnx.helper`` straight from the parameters (``torch.onnx.export``
cannot trace the fused kernel). It computes the module's *inference* semantics in float32:
dropout of every kind is the identity and zoneout its expectation, ``h' = p h + (1 - p) h_new``.

How each recurrence maps (``T`` steps, ``N`` batch, ``D`` directions, ``H`` units):

- ``gru`` and ``gru_reset_before`` without layer norm or zoneout: the ONNX ``GRU`` operator,
  ``linear_before_reset=1`` (reset after the recurrent matmul, torch's cell) resp. ``0``. ONNX
  orders the gate blocks ``(z, r, h)``, torch ``(r, z, n)``; ``Wb``/``Rb`` are ``bias_ih``/
  ``bias_hh`` in that order. ``lstm``: the ``LSTM`` operator (torch ``(i, f, g, o)`` -> ONNX
  ``(i, o, f, c)``); ``rnn_tanh``: the ``RNN`` operator. A bidirectional layer is one operator
  with ``direction="bidirectional"``; its output ``(T, D, N, H)`` is reshaped to ``(T, N, D*H)``
  for the next layer; one operator per layer.
- every other variant, and ``gru`` with layer norm or zoneout: the input projection of all steps
  ``x W_ih^T + b_ih`` ``(T, N, Gx*H)`` as one MatMul, then a ``Scan`` over time whose body is
  the variant's cell, generated from its description (:mod:`grukit.variants`): the blocks, what
  feeds them, where the reset gate acts and the family's update rule.
- variable lengths (``lengths``, ``(N,)`` int64 in ``[1, T]``): ``sequence_lens`` of the
  operators; in a Scan a step ``t >= lengths[b]`` keeps the state and writes 0, and the reverse
  direction scans from ``T - 1`` down, so each sequence starts at its own last step. The outputs
  past a sequence's end are 0, like ``pad_packed_sequence``; ``h_n`` is each sequence's own.

Graph inputs are ``input`` (``ids`` for a language model), ``lengths`` with ``lengths=True``,
``h0`` (and ``c0`` for the LSTM) with ``initial_state=True``; ``T`` and ``N`` are dynamic.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from grukit.cell_options import LAYER_NORM_EPS
from grukit.errors import ExportError
from grukit.variants import VARIANTS, Variant

if TYPE_CHECKING:
    import onnx

    from grukit.rnn import GRU

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "describe_io",
    "gru_operator_model",
    "onnx_gate_order",
    "to_onnx",
]

#: The opset ``to_onnx`` writes unless told otherwise (17: the first with LayerNormalization).
DEFAULT_OPSET = 17
#: The oldest opset ``to_onnx`` writes (13 moved Split/Squeeze/Unsqueeze axes to inputs).
MIN_OPSET = 14

#: Per ONNX recurrent operator: torch's gate blocks in the operator's order (indices into them).
_OPERATOR_GATES = {
    "GRU": (1, 0, 2),  # torch r, z, n -> ONNX z, r, h
    "LSTM": (0, 3, 1, 2),  # torch i, f, g, o -> ONNX i, o, f, c
    "RNN": (0,),
}
_BASELINE_OPERATORS = {"lstm": "LSTM", "rnn_tanh": "RNN"}
#: The GRU variants the ONNX GRU operator computes: linear_before_reset of each.
_GRU_OPERATOR_VARIANTS = {"gru": 1, "gru_reset_before": 0}

_SUPPORTED = (
    "grukit.GRU, torch.nn.GRU, SequenceModel, SequenceClassifier, Forecaster, LanguageModel"
)


def onnx_gate_order(w: np.ndarray, operator: str = "GRU") -> np.ndarray:
    """torch's gate blocks (rows of ``w``, e.g. ``(3H, I)`` or ``(3H,)``) in the order of the
    ONNX ``operator`` ("GRU": ``r, z, n -> z, r, h``; "LSTM": ``i, f, g, o -> i, o, f, c``)."""
    order = _OPERATOR_GATES[operator]
    blocks = np.split(np.asarray(w), len(order), axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx package: pip install 'grukit[export]' (or onnx>=1.15)"
        ) from None
    return onnx


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


# ------------------------------------------------------------------------------ graph building


class _Graph:
    """The nodes of one ONNX graph; a subgraph (a Scan or Loop body) shares its root's names and
    initializers, which the body reads from the outer scope."""

    def __init__(self, opset: int, root: _Graph | None = None) -> None:
        from onnx import TensorProto, helper

        self.helper, self.types = helper, TensorProto
        self.opset = opset
        self.root = root or self
        self.nodes: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.values: dict[Any, str] = {}  # values of this graph, computed once
        if root is None:
            self.initializers: dict[str, Any] = {}
            self.constants: dict[Any, str] = {}
            self.count = 0

    def name(self, hint: str) -> str:
        self.root.count += 1
        return f"{hint}_{self.root.count}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        """Append a node; returns its output's name (a list of ``outputs`` names if > 1)."""
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, array: Any, hint: str = "const") -> str:
        """An initializer of the root graph (float32 unless integer or bool); equal arrays are
        stored once (the decoder of a Forecaster reuses its encoder's weights)."""
        from onnx import numpy_helper

        root = self.root
        a = np.asarray(array)
        if a.dtype.kind == "f":
            a = a.astype(np.float32)
        key = (a.dtype.str, a.shape, hashlib.sha1(a.tobytes()).hexdigest())
        if key not in root.constants:
            name = self.name(hint)
            root.initializers[name] = numpy_helper.from_array(a, name)
            root.constants[key] = name
        return root.constants[key]

    def ints(self, values: Sequence[int] | int) -> str:
        return self.const(np.asarray(values, np.int64), "ints")

    def scalar(self, value: float) -> str:
        return self.const(np.float32(value), "scalar")

    def input(self, name: str, elem: int, shape: Sequence[Any] | None) -> str:
        self.inputs.append(self.helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, value: str, elem: int, shape: Sequence[Any] | None) -> None:
        self.nodes.append(self.helper.make_node("Identity", [value], [name]))
        self.outputs.append(self.helper.make_tensor_value_info(name, elem, shape))

    def subgraph(self) -> _Graph:
        return _Graph(self.opset, self.root)

    def graph(self, name: str) -> Any:
        inits = list(self.initializers.values()) if self is self.root else []
        return self.helper.make_graph(self.nodes, name, self.inputs, self.outputs, inits)

    # -- small compositions
    def add(self, terms: Sequence[str | None]) -> str:
        present = [t for t in terms if t is not None]
        total = present[0]
        for t in present[1:]:
            total = self.op("Add", total, t)
        return total

    def concat(self, values: Sequence[str], axis: int) -> str:
        return values[0] if len(values) == 1 else self.op("Concat", *values, axis=axis)

    def split(self, x: str, parts: int, axis: int = -1) -> list[str]:
        if parts == 1:
            return [x]
        return self.op("Split", x, outputs=parts, axis=axis, num_outputs=parts) if (
            self.opset >= 18
        ) else self.op("Split", x, outputs=parts, axis=axis)  # fmt: skip

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", x, self.ints(list(axes)))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", x, self.ints(list(axes)))

    def reduce(self, op_type: str, x: str, axis: int) -> str:
        """``op_type`` (ReduceSum, ReduceMax) over ``axis``, dropped; axes an input from 18 on
        (ReduceSum: 13)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.ints([axis]), keepdims=0)
        return self.op(op_type, x, axes=[axis], keepdims=0)

    def linear(self, x: str, layer: nn.Linear, hint: str) -> str:
        """``x W^T + b`` of a torch Linear (any leading dims)."""
        y = self.op("MatMul", x, self.const(_numpy(layer.weight).T, hint + ".weight_T"))
        if layer.bias is not None:
            y = self.op("Add", y, self.const(_numpy(layer.bias), hint + ".bias"))
        return y

    def dim(self, x: str, axis: int) -> str:
        """The size of ``x`` along ``axis`` as a 1-D int64 tensor ``(1,)``."""
        key = ("dim", x, axis)
        if key not in self.values:
            shape = self.op("Shape", x)
            self.values[key] = self.op(
                "Slice", shape, self.ints([axis]), self.ints([axis + 1]), self.ints([0])
            )
        return self.values[key]


def _block_layer_norm(g: _Graph, u: str, gain: np.ndarray, H: int, rank: int, hint: str) -> str:
    """Layer norm of each ``H``-wide block of ``u`` (last axis ``K*H``), times its gain
    ``(K*H,)``: ``gain_k (u_k - mean u_k) / sqrt(var u_k + eps)`` (biased variance)."""
    K = gain.size // H
    keep = [0] * (rank - 1)
    blocks = g.op("Reshape", u, g.ints([*keep, K, H]))
    ones = g.const(np.ones(H, np.float32), "ones")
    normed = g.op("LayerNormalization", blocks, ones, axis=-1, epsilon=LAYER_NORM_EPS)
    scaled = g.op("Mul", normed, g.const(gain.reshape(K, H), hint + ".ln_gain"))
    return g.op("Reshape", scaled, g.ints([*keep, K * H]))


# ----------------------------------------------------------------------------- one recurrence


def _rows(a: np.ndarray, index: int, H: int) -> np.ndarray:
    return a[index * H : (index + 1) * H]


def _blocks_of(
    a: np.ndarray | None, layout: Sequence[str], blocks: Sequence[str], H: int
) -> np.ndarray | None:
    """The rows of ``blocks`` in ``a`` (whose blocks are ``layout``), zeros for a block not in
    it; None if none is."""
    if a is None or not any(b in layout for b in blocks):
        return None
    width = a.shape[1:]
    return np.concatenate([
        _rows(a, layout.index(b), H) if b in layout else np.zeros((H, *width), a.dtype)
        for b in blocks
    ])  # fmt: skip


class _LayerDirection:
    """The numpy parameters of one layer-direction of a GRU-family stack, and what the graph
    of its cell needs: the variant, the layer-norm gains and zoneout's ``p``."""

    def __init__(self, rnn: GRU, layer: int, direction: int) -> None:
        w = rnn.layer_weights(layer, direction)
        ln_ih, ln_hh = rnn.layer_norm_gains(layer, direction)
        self.v: Variant = VARIANTS[rnn.variant]
        self.H = rnn.hidden_size
        self.weight_ih = _numpy(w.weight_ih)
        self.weight_hh = None if w.weight_hh is None else _numpy(w.weight_hh)
        self.bias_ih = None if w.bias_ih is None else _numpy(w.bias_ih)
        self.bias_hh = None if w.bias_hh is None else _numpy(w.bias_hh)
        self.ln_ih = None if ln_ih is None else _numpy(ln_ih)
        self.ln_hh = None if ln_hh is None else _numpy(ln_hh)
        self.zoneout = rnn.cell_options.zoneout
        self.hint = f"l{layer}" + ("_reverse" if direction else "")

    def recurrent(self, g: _Graph, state: str, blocks: Sequence[str], hint: str) -> str:
        """``LN(state U_k^T) + b_hk`` of ``blocks`` side by side, ``(N, len(blocks)*H)``: one
        MatMul; a block without ``b_hk`` adds 0, without layer norm skips it."""
        v, H = self.v, self.H
        assert self.weight_hh is not None
        U = _blocks_of(self.weight_hh, v.h_blocks, blocks, H)
        u = g.op("MatMul", state, g.const(U.T, f"{self.hint}.U_{hint}_T"))
        if self.ln_hh is not None:
            gains = _blocks_of(self.ln_hh, v.h_blocks, blocks, H)
            u = _block_layer_norm(g, u, gains, H, 2, f"{self.hint}.hh_{hint}")
        b = _blocks_of(self.bias_hh, v.bias_hh_blocks, blocks, H)
        return u if b is None else g.op("Add", u, g.const(b, f"{self.hint}.b_hh_{hint}"))

    def input_projection(self, g: _Graph, x: str) -> str:
        """``LN(x W_ih^T) + b_ih`` of every step at once: x ``(T, N, I)`` -> ``(T, N, Gx*H)``."""
        v, H = self.v, self.H
        gx = g.op("MatMul", x, g.const(self.weight_ih.T, f"{self.hint}.W_ih_T"))
        if self.ln_ih is not None:
            gx = _block_layer_norm(g, gx, self.ln_ih, H, 3, f"{self.hint}.ih")
        b = _blocks_of(self.bias_ih, v.bias_ih_blocks, v.x_blocks, H)
        return gx if b is None else g.op("Add", gx, g.const(b, f"{self.hint}.b_ih"))

    def cell_body(self, g: _Graph, masked: bool) -> Any:
        """The Scan body of one step: ``(h (N, H), gx_t (N, Gx*H)[, valid_t (N, 1)]) -> (h',
        y_t)``, the cell of ``self.v`` (its equations: ``v.equations``).

        Gates: ``sigma(a_k)`` with ``a_k`` the sum of what feeds block ``k`` (``gx_k``, ``U_k h +
        b_hk``, or the bias alone). Candidate: ``a_n = gx_n + r * (U_n h + b_hn)`` (reset
        after), ``gx_n + U_n (r * h) + b_hn`` (reset before), ``gx_n`` (minGRU, through ``g``),
        ``r`` the first gate. Update (the last gate ``u``): ``n + u (h - n)`` (``gru``: ``u``
        keeps) or ``h + u (n - h)`` (MGU, minGRU: ``u`` writes); zoneout then ``+ p (h - h')``.
        With ``valid_t`` a finished sequence keeps ``h`` and writes 0.
        """
        v, H, T = self.v, self.H, g.types
        b = g.subgraph()
        h = b.input(b.name("h"), T.FLOAT, ["N", H])
        gx = b.input(b.name("gx"), T.FLOAT, ["N", len(v.x_blocks) * H])
        valid = b.input(b.name("valid"), T.BOOL, ["N", 1]) if masked else None
        x_part = dict(zip(v.x_blocks, b.split(gx, len(v.x_blocks)), strict=True))
        direct = [k for k in v.h_blocks if not (v.reset == "before" and k == "n")]
        h_part: dict[str, str] = {}
        if direct:
            terms = self.recurrent(b, h, direct, "".join(direct))
            h_part = dict(zip(direct, b.split(terms, len(direct)), strict=True))

        def preactivation(k: str) -> str:
            alone = None  # a gate made of its bias alone (GRU3, MGU3)
            if k not in v.x_blocks and k not in v.h_blocks:
                bias = _blocks_of(self.bias_hh, v.bias_hh_blocks, [k], H)
                assert bias is not None  # the GRU refuses bias=False for these variants
                alone = b.const(bias, f"{self.hint}.b_hh_{k}")
            return b.add([x_part.get(k), h_part.get(k), alone])

        act = {gate.name: b.op("Sigmoid", preactivation(gate.name)) for gate in v.gates}
        r, u = act[v.gates[0].name], act[v.gates[-1].name]
        if v.reset == "after":
            a_n = b.op("Add", x_part["n"], b.op("Mul", r, h_part["n"]))
        elif v.reset == "before":
            a_n = b.op("Add", x_part["n"], self.recurrent(b, b.op("Mul", r, h), ["n"], "n"))
        else:
            a_n = preactivation("n")
        if v.family == "mingru":  # g(a) = a + 1/2 for a >= 0, sigma(a) below
            nonneg = b.op("GreaterOrEqual", a_n, b.scalar(0.0))
            n = b.op("Where", nonneg, b.op("Add", a_n, b.scalar(0.5)), b.op("Sigmoid", a_n))
        else:
            n = b.op("Tanh", a_n)
        if v.family == "gru":
            h_new = b.op("Add", n, b.op("Mul", u, b.op("Sub", h, n)))
        else:
            h_new = b.op("Add", h, b.op("Mul", u, b.op("Sub", n, h)))
        if self.zoneout:  # the expectation of the keep mask: p h + (1 - p) h_new
            h_new = b.op("Add", h_new, b.op("Mul", b.scalar(self.zoneout), b.op("Sub", h, h_new)))
        if valid is None:
            h_next, y = h_new, h_new
        else:
            h_next = b.op("Where", valid, h_new, h)
            y = b.op("Where", valid, h_new, b.scalar(0.0))
        b.output(b.name("h_next"), h_next, T.FLOAT, ["N", H])
        b.output(b.name("y"), y, T.FLOAT, ["N", H])
        return b.graph(f"{self.hint}_{v.name}_cell")

    def scan(self, g: _Graph, x: str, valid: str | None, h0: str, reverse: bool) -> tuple[str, str]:
        """The layer-direction over the sequence: x ``(T, N, I)``, h0 ``(N, H)`` -> ``(y (T, N,
        H), h_n (N, H))``."""
        scanned = [self.input_projection(g, x)] + ([valid] if valid is not None else [])
        directions = {}
        if reverse:
            directions = {"scan_input_directions": [1] * len(scanned),
                          "scan_output_directions": [1]}  # fmt: skip
        h_n, y = g.op(
            "Scan", h0, *scanned, outputs=2, body=self.cell_body(g, valid is not None),
            num_scan_inputs=len(scanned), **directions,
        )  # fmt: skip
        return y, h_n


def _recurrent_operator(
    g: _Graph,
    operator: str,
    directions: Sequence[Mapping[str, np.ndarray]],
    x: str,
    lengths: str | None = None,
    h0: str | None = None,
    c0: str | None = None,
    hint: str = "",
    **attrs: Any,
) -> list[str]:
    """One ONNX ``GRU``/``LSTM``/``RNN`` node on torch-layout weights, one mapping
    (``weight_ih``, ``weight_hh``, optional ``bias_ih``, ``bias_hh``) per direction: x ``(T, N,
    I)``, lengths ``(N,)`` int32, h0, c0 ``(D, N, H)`` -> ``[Y (T, D, N, H), Y_h (D, N, H)]``
    (and ``Y_c`` for the LSTM). ``B`` is ``Wb`` then ``Rb`` per direction."""
    H = directions[0]["weight_hh"].shape[1]
    W = np.stack([onnx_gate_order(d["weight_ih"], operator) for d in directions])
    R = np.stack([onnx_gate_order(d["weight_hh"], operator) for d in directions])
    inputs = [x, g.const(W, hint + "W"), g.const(R, hint + "R")]
    if directions[0].get("bias_ih") is not None:
        B = np.stack([
            np.concatenate([onnx_gate_order(d["bias_ih"], operator),
                            onnx_gate_order(d["bias_hh"], operator)])
            for d in directions
        ])  # fmt: skip
        inputs.append(g.const(B, hint + "B"))
    else:
        inputs.append("")
    inputs += [lengths or "", h0 or ""]
    if operator == "LSTM":
        inputs.append(c0 or "")
    while inputs[-1] == "":
        inputs.pop()
    direction = "bidirectional" if len(directions) == 2 else "forward"
    return g.op(
        operator, *inputs, outputs=3 if operator == "LSTM" else 2, hidden_size=H,
        direction=direction, **attrs,
    )  # fmt: skip


def _valid_mask(g: _Graph, x: str, lengths: str) -> str:
    """``t < lengths[b]``: ``(T, N, 1)`` bool, for x ``(T, N, ...)``."""
    key = ("valid", x, lengths)
    if key not in g.values:
        steps = g.op("Range", g.const(np.int64(0), "zero"),
                     g.squeeze(g.dim(x, 0), [0]), g.const(np.int64(1), "one"))  # fmt: skip
        less = g.op("Less", g.unsqueeze(steps, [1]), g.unsqueeze(lengths, [0]))
        g.values[key] = g.unsqueeze(less, [2])
    return g.values[key]


def _operator_of(rnn: GRU) -> str | None:
    """The ONNX operator that computes ``rnn``'s cell, or None (then a Scan over its cell)."""
    opts = rnn.cell_options
    if rnn.variant in _GRU_OPERATOR_VARIANTS and not (opts.layer_norm or opts.zoneout):
        return "GRU"  # the other options are the identity at inference
    return _BASELINE_OPERATORS.get(rnn.variant)


def _operator_layer(
    g: _Graph, rnn: GRU, operator: str, layer: int, x: str, lengths32: str | None,
    h0: str | None, c0: str | None,
) -> tuple[str, str, str | None]:  # fmt: skip
    """Layer ``layer`` as one operator node: x ``(T, N, I)`` -> ``(y (T, N, D*H), h_n (D, N,
    H), c_n)``; h0, c0: the whole stack's ``(L*D, N, H)``, sliced to this layer's rows."""
    D = 2 if rnn.bidirectional else 1
    weights = [
        {k: _numpy(t) for k, t in rnn.layer_weights(layer, d)._asdict().items() if t is not None}
        for d in range(D)
    ]

    def rows(state: str | None) -> str | None:
        if state is None:
            return None
        return g.op("Slice", state, g.ints([layer * D]), g.ints([(layer + 1) * D]), g.ints([0]))

    attrs = {}
    if operator == "GRU":
        attrs["linear_before_reset"] = _GRU_OPERATOR_VARIANTS[rnn.variant]
    outs = _recurrent_operator(
        g, operator, weights, x, lengths32, rows(h0), rows(c0), hint=f"l{layer}.", **attrs
    )
    # (T, D, N, H) -> (T, N, D*H): the directions side by side, as the next layer reads them
    y = g.op("Reshape", g.op("Transpose", outs[0], perm=[0, 2, 1, 3]), g.ints([0, 0, -1]))
    return y, outs[1], outs[2] if operator == "LSTM" else None


def _scan_layer(
    g: _Graph, rnn: GRU, layer: int, x: str, valid: str | None, h0: str | None
) -> tuple[str, str]:
    """Layer ``layer`` as one Scan per direction: x ``(T, N, I)`` -> ``(y (T, N, D*H), h_n (D,
    N, H))``; h0: the whole stack's ``(L*D, N, H)`` or None (zeros)."""
    D = 2 if rnn.bidirectional else 1
    ys, finals = [], []
    for d in range(D):
        if h0 is None:
            shape = g.op("Concat", g.dim(x, 1), g.ints([rnn.hidden_size]), axis=0)
            start = g.op("ConstantOfShape", shape)  # zeros (N, H)
        else:
            start = g.op("Gather", h0, g.const(np.int64(layer * D + d), "index"), axis=0)
        y, h_n = _LayerDirection(rnn, layer, d).scan(g, x, valid, start, reverse=d == 1)
        ys.append(y)
        finals.append(g.unsqueeze(h_n, [0]))
    return g.concat(ys, -1), g.concat(finals, 0)


def _recurrent_stack(
    g: _Graph,
    rnn: GRU,
    x: str,
    lengths: str | None,
    h0: str | None,
    c0: str | None = None,
) -> tuple[str, str, str | None]:
    """The whole stack: x ``(T, N, I)``, lengths ``(N,)`` int64, h0 (c0) ``(L*D, N, H)`` (None:
    zeros) -> ``(y (T, N, D*H), h_n (L*D, N, H), c_n or None)``, one node per layer (Scan: per
    layer-direction); inference, so inter-layer dropout is the identity."""
    operator = _operator_of(rnn)
    valid = None if lengths is None else _valid_mask(g, x, lengths)
    h_finals, c_finals = [], []
    if operator is not None:
        lengths32 = None if lengths is None else g.op("Cast", lengths, to=g.types.INT32)
        for layer in range(rnn.num_layers):
            x, h_n, c_n = _operator_layer(g, rnn, operator, layer, x, lengths32, h0, c0)
            h_finals.append(h_n)
            c_finals += [c_n] if c_n is not None else []
        if valid is not None:  # 0 past each end, whatever the runtime leaves there
            x = g.op("Where", valid, x, g.scalar(0.0))
    else:
        for layer in range(rnn.num_layers):
            x, h_n = _scan_layer(g, rnn, layer, x, valid, h0)
            h_finals.append(h_n)
    return x, g.concat(h_finals, 0), g.concat(c_finals, 0) if c_finals else None


# ------------------------------------------------------------------------------- the models


class _Interface:
    """What a model's graph takes and gives, decided once from the export's options."""

    def __init__(self, g: _Graph, rnn: GRU, lengths: bool, initial_state: bool) -> None:
        self.g, self.rnn = g, rnn
        self.lengths = g.input("lengths", g.types.INT64, ["N"]) if lengths else None
        self.h0 = self.c0 = None
        self.layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
        if initial_state:
            shape = [self.layers, "N", rnn.hidden_size]
            self.h0 = g.input("h0", g.types.FLOAT, shape)
            if rnn.variant == "lstm":
                self.c0 = g.input("c0", g.types.FLOAT, shape)

    def stack(self, x: str) -> tuple[str, str, str | None]:
        return _recurrent_stack(self.g, self.rnn, x, self.lengths, self.h0, self.c0)

    def state_outputs(self, h_n: str, c_n: str | None) -> None:
        shape = [self.layers, "N", self.rnn.hidden_size]
        self.g.output("h_n", h_n, self.g.types.FLOAT, shape)
        if c_n is not None:
            self.g.output("c_n", c_n, self.g.types.FLOAT, shape)

    def mask(self, x: str, like: str) -> str:
        """``x`` ``(T, N, F)`` with 0 past each sequence's end (as ``pad_packed_sequence``)."""
        if self.lengths is None:
            return x
        return self.g.op("Where", _valid_mask(self.g, like, self.lengths), x, self.g.scalar(0.0))


def _top_state(g: _Graph, h_n: str, rnn: GRU) -> str:
    """The top layer's final states side by side, ``(N, D*H)`` (forward, then reverse)."""
    D = 2 if rnn.bidirectional else 1
    L = rnn.num_layers
    top = g.op("Slice", h_n, g.ints([(L - 1) * D]), g.ints([L * D]), g.ints([0]))
    return g.op("Reshape", g.op("Transpose", top, perm=[1, 0, 2]), g.ints([0, -1]))


def _export_gru(g: _Graph, rnn: GRU, lengths: bool, initial_state: bool) -> str:
    T = g.types
    D = 2 if rnn.bidirectional else 1
    seq = ["N", "T"] if rnn.batch_first else ["T", "N"]
    x = g.input("input", T.FLOAT, [*seq, rnn.input_size])
    io = _Interface(g, rnn, lengths, initial_state)
    if rnn.batch_first:
        x = g.op("Transpose", x, perm=[1, 0, 2])
    y, h_n, c_n = io.stack(x)
    if rnn.batch_first:
        y = g.op("Transpose", y, perm=[1, 0, 2])
    g.output("output", y, T.FLOAT, [*seq, D * rnn.hidden_size])
    io.state_outputs(h_n, c_n)
    return f"{rnn.variant} GRU stack"


def _export_per_step_model(g: _Graph, model: Any, lengths: bool, initial_state: bool) -> str:
    """A SequenceModel (``input`` (T, N, I)) or a LanguageModel (``ids`` (T, N) int64 through its
    embedding): the recurrent stack, then the linear head at every step."""
    T = g.types
    embedding = getattr(model, "embedding", None)
    if embedding is not None:
        first = g.input("ids", T.INT64, ["T", "N"])
        what = "LanguageModel (embedding, recurrent stack, linear head)"
    else:
        first = g.input("input", T.FLOAT, ["T", "N", model.rnn.input_size])
        what = "SequenceModel (per-step linear head)"
    io = _Interface(g, model.rnn, lengths, initial_state)  # lengths, h0: after the first input
    x = first
    if embedding is not None:
        x = g.op("Gather", g.const(_numpy(embedding.weight), "embedding"), first, axis=0)
    y, h_n, c_n = io.stack(x)
    logits = io.mask(g.linear(y, model.head, "head"), x)
    g.output("logits", logits, T.FLOAT, ["T", "N", model.head.out_features])
    io.state_outputs(h_n, c_n)
    return what


def _export_classifier(g: _Graph, model: Any, lengths: bool, initial_state: bool) -> str:
    T = g.types
    if not lengths:
        raise ExportError(
            "to_onnx: a SequenceClassifier pools over each sequence's valid steps, so its graph "
            "always takes lengths; pass lengths=True or leave it unset"
        )
    if initial_state:
        raise ExportError("to_onnx: a SequenceClassifier starts from zeros; it takes no h0")
    rnn = model.rnn
    x = g.input("input", T.FLOAT, ["T", "N", rnn.input_size])
    io = _Interface(g, rnn, True, False)
    y, h_n, _ = io.stack(x)
    valid = _valid_mask(g, x, io.lengths)
    if model.pooling == "last":
        pooled = _top_state(g, h_n, rnn)
    elif model.pooling == "mean":
        total = g.reduce("ReduceSum", g.op("Where", valid, y, g.scalar(0.0)), 0)
        count = g.op("Cast", g.unsqueeze(io.lengths, [1]), to=T.FLOAT)
        pooled = g.op("Div", total, count)
    else:
        pooled = g.reduce("ReduceMax", g.op("Where", valid, y, g.scalar(-np.inf)), 0)
    g.output(
        "logits", g.linear(pooled, model.head, "head"), T.FLOAT, ["N", model.head.out_features]
    )
    return f"SequenceClassifier (pooling {model.pooling})"


def _export_forecaster(g: _Graph, model: Any, lengths: bool, initial_state: bool) -> str:
    T = g.types
    if lengths or initial_state:
        raise ExportError(
            "to_onnx: a Forecaster reads whole windows from a zero state; it takes no lengths "
            "and no h0"
        )
    rnn = model.rnn
    x = g.input("input", T.FLOAT, ["W", "N", rnn.input_size])
    last = g.op("Slice", x, g.ints([-1, 0]), g.ints([np.iinfo(np.int64).max, model.targets]),
                g.ints([0, 2]))  # fmt: skip
    last = g.squeeze(last, [0])  # (N, targets): the latest observed targets
    _, h_n, c_n = _recurrent_stack(g, rnn, x, None, None)
    out = _top_state(g, h_n, rnn)
    if model.decoder == "direct":
        delta = g.op("Reshape", g.linear(out, model.head, "head"),
                     g.ints([0, model.horizon, model.targets]))  # fmt: skip
        forecast = g.op("Add", g.unsqueeze(last, [1]), delta)
    else:
        forecast = _autoregressive_decoder(g, model, last, out, h_n, c_n)
    g.output("forecast", forecast, T.FLOAT, ["N", model.horizon, model.targets])
    return f"Forecaster ({model.decoder} decoder)"


def _autoregressive_decoder(
    g: _Graph, model: Any, last: str, out: str, h_n: str, c_n: str | None
) -> str:
    """A ``Loop`` of ``horizon`` steps carrying ``(y, out, state)``: ``y <- y + head(out)``,
    then one step of the stack on ``y``. Returns the ``y``'s ``(N, horizon, targets)``."""
    T = g.types
    body = g.subgraph()
    body.input(body.name("iteration"), T.INT64, [])
    cond = body.input(body.name("cond"), T.BOOL, [])
    rnn = model.rnn
    state_shape = [rnn.num_layers, "N", rnn.hidden_size]
    shapes = [["N", model.targets], ["N", rnn.hidden_size], state_shape, state_shape]
    y = body.input(body.name("y"), T.FLOAT, shapes[0])
    top = body.input(body.name("out"), T.FLOAT, shapes[1])
    h = body.input(body.name("h"), T.FLOAT, state_shape)
    c = body.input(body.name("c"), T.FLOAT, state_shape) if c_n is not None else None
    y_next = body.op("Add", y, body.linear(top, model.head, "head"))
    seq, h_next, c_next = _recurrent_stack(body, model.rnn, body.unsqueeze(y_next, [0]), None, h, c)
    body.output(body.name("cond_out"), cond, T.BOOL, [])
    for value, shape in zip((y_next, body.squeeze(seq, [0]), h_next, c_next), shapes, strict=True):
        if value is not None:
            body.output(body.name("carried"), value, T.FLOAT, shape)
    body.output(body.name("forecast_step"), y_next, T.FLOAT, shapes[0])
    carried = [last, out, h_n] + ([c_n] if c_n is not None else [])
    results = g.op(
        "Loop", g.ints(model.horizon), g.const(np.bool_(True), "true"), *carried,
        outputs=len(carried) + 1, body=body.graph("autoregressive_decoder"),
    )  # fmt: skip
    return g.op("Transpose", results[-1], perm=[1, 0, 2])  # (horizon, N, t) -> (N, horizon, t)


def _exporter(module: nn.Module) -> tuple[Callable[..., str], Any, bool]:
    """``(build, rnn, lengths by default)`` for a module, or an ExportError naming it."""
    from grukit import models
    from grukit.rnn import GRU

    kinds: list[tuple[type, Callable[..., str], bool]] = [
        (GRU, _export_gru, False),
        (models.SequenceModel, _export_per_step_model, False),
        (models.SequenceClassifier, _export_classifier, True),
        (models.Forecaster, _export_forecaster, False),
        (models.LanguageModel, _export_per_step_model, False),
    ]
    for cls, build, lengths in kinds:
        if isinstance(module, cls):
            rnn = module if isinstance(module, GRU) else module.rnn
            if not isinstance(rnn, GRU):
                raise ExportError(
                    f"to_onnx: the recurrent stack of this {cls.__name__} is a "
                    f"{type(rnn).__name__}, not a grukit.GRU"
                )
            return build, rnn, lengths
    raise ExportError(f"to_onnx: cannot export a {type(module).__name__}; supported: {_SUPPORTED}")


def _check_opset(opset: object, onnx: Any) -> int:
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"to_onnx: opset must be an integer in [{MIN_OPSET}, {newest}] (the onnx package's "
            f"newest), got {opset!r}"
        )
    return opset


def _write_new_file(path: Path, data: bytes, overwrite: bool) -> None:
    """Write ``data`` to ``path``; unless ``overwrite``, refuse a path that exists (the name is
    taken with O_EXCL, so a file that appears meanwhile is never clobbered either)."""
    if not path.parent.is_dir():
        raise ExportError(f"to_onnx: the folder {path.parent} does not exist")
    if overwrite:
        path.write_bytes(data)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except FileExistsError:
        raise ExportError(f"{path} already exists; grukit never overwrites it") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def to_onnx(
    module: nn.Module,
    path: str | os.PathLike[str] | None = None,
    example_input: Any = None,
    *,
    opset: int = DEFAULT_OPSET,
    lengths: bool | None = None,
    initial_state: bool = False,
    overwrite: bool = False,
) -> onnx.ModelProto:
    """The ONNX model of ``module``'s inference (eval) computation, written to ``path`` if given.

    module: a :class:`grukit.GRU` (or ``torch.nn.GRU``), or a task model of
    :mod:`grukit.models`, any variant and in-cell options. Graph inputs (``T``, ``N`` dynamic):

    - GRU: ``input`` ``(T, N, H_in)`` (``(N, T, H_in)`` if ``batch_first``) -> ``output``
      ``(T, N, D*H)``, ``h_n`` ``(L*D, N, H)`` (``c_n`` too for the LSTM);
    - SequenceModel: ``input`` ``(T, N, H_in)`` -> ``logits`` ``(T, N, O)``, ``h_n``;
    - LanguageModel: ``ids`` ``(T, N)`` int64 -> ``logits`` ``(T, N, V)``, ``h_n``;
    - SequenceClassifier: ``input`` ``(T, N, H_in)``, ``lengths`` -> ``logits`` ``(N, C)``;
    - Forecaster (direct or autoregressive): ``input`` ``(W, N, inputs)`` -> ``forecast``
      ``(N, horizon, targets)``.

    lengths: add an int64 ``lengths`` ``(N,)`` input (each in ``[1, T]``); outputs past a
    sequence's end are 0 (always on for the classifier). initial_state: add ``h0`` (``c0``)
    ``(L*D, N, H)``, else the state starts at zeros. opset: ``MIN_OPSET`` to the onnx
    package's newest (layer norm needs 17). Refuses with :class:`grukit.errors.ExportError` what
    it cannot export, and an existing ``path`` unless ``overwrite``.

    example_input: what the module takes, ``x``, ``(x, h0)`` or a PackedSequence. Where
    ``lengths`` / ``initial_state`` are not given, a PackedSequence adds ``lengths`` and a state
    adds ``h0``; when onnxruntime is installed, the graph is run on the example and must give
    the module's outputs (within 1e-4), else nothing is written and ExportError says by how much.
    """
    onnx = _require_onnx()
    opset = _check_opset(opset, onnx)
    if isinstance(module, nn.GRU):
        from grukit.rnn import GRU

        module = GRU.from_torch(module)
    if example_input is not None:
        packed = isinstance(example_input, PackedSequence)
        if lengths is None and packed:
            lengths = True
        if isinstance(example_input, tuple) and not packed and len(example_input) == 2:
            initial_state = True
    build, rnn, default_lengths = _exporter(module)
    if rnn.cell_options.layer_norm and opset < 17:
        raise ExportError(
            f"to_onnx: layer_norm needs opset 17 or later (LayerNormalization), got {opset}"
        )
    g = _Graph(opset)
    what = build(g, module, default_lengths if lengths is None else lengths, initial_state)
    from onnx import helper

    import grukit

    model = helper.make_model(
        g.graph("grukit"), opset_imports=[helper.make_opsetid("", opset)],
        producer_name="grukit", producer_version=grukit.__version__,
        doc_string=f"grukit {what}, variant {rnn.variant}, inference semantics",
    )  # fmt: skip
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model)
    if example_input is not None:
        _check_on_example(model, module, example_input)
    if path is not None:
        _write_new_file(Path(path), model.SerializeToString(), overwrite)
    return model


def _check_on_example(model: onnx.ModelProto, module: nn.Module, example: Any) -> None:
    """Run ``model`` in onnxruntime on ``example`` (when it is installed) against ``module``."""
    try:
        import onnxruntime
    except ImportError:
        return
    from torch.nn.utils.rnn import pad_packed_sequence

    state = None
    if isinstance(example, tuple) and not isinstance(example, PackedSequence):
        example, state = example
    batch_first = bool(getattr(module, "batch_first", False))
    names = [i.name for i in model.graph.input]
    with torch.no_grad():
        was_training = module.training
        module.eval()
        try:
            want = module(example) if state is None else module(example, state)
        finally:
            module.train(was_training)
        if isinstance(example, PackedSequence):
            x, n = pad_packed_sequence(example, batch_first=batch_first)
        else:
            x = example
            n = torch.full((x.shape[0 if batch_first else 1],), x.shape[1 if batch_first else 0])
    feed = {names[0]: x.numpy() if x.dtype == torch.int64 else x.float().numpy()}
    if "lengths" in names:
        feed["lengths"] = n.to(torch.int64).numpy()
    if "h0" in names:
        h0 = state[0] if isinstance(state, tuple) else state
        feed["h0"] = (torch.zeros(0) if h0 is None else h0).float().numpy()
    if "c0" in names and isinstance(state, tuple):
        feed["c0"] = state[1].float().numpy()
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, feed)
    wanted = list(want) if isinstance(want, tuple) else [want]
    for i, (g, w) in enumerate(zip(got, wanted, strict=False)):
        if isinstance(w, PackedSequence):
            w = pad_packed_sequence(w, batch_first=batch_first)[0]
        elif isinstance(w, tuple):  # an LSTM's (h_n, c_n)
            w = w[0]
        w = w.float().numpy()
        worst = float(np.abs(g - w).max()) if g.shape == w.shape else float("inf")
        if not worst <= 1e-4:
            raise ExportError(
                f"to_onnx: on the example input, the graph's {model.graph.output[i].name} "
                f"differs from the module's by {worst:.3g} (shapes {g.shape} and {w.shape}); "
                "nothing was written"
            )


def describe_io(model: onnx.ModelProto) -> list[str]:
    """One line per graph input and output: ``input  name  type  (dims)``."""
    from onnx import TensorProto

    lines = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            t = value.type.tensor_type
            dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
            dtype = TensorProto.DataType.Name(t.elem_type).lower()
            lines.append(f"{kind:6s} {value.name:8s} {dtype} ({', '.join(dims)})")
    return lines


def gru_operator_model(
    weights: Mapping[str, np.ndarray], steps: int | str = "T", batch: int | str = "N"
) -> onnx.ModelProto:
    """One torch-layout GRU layer (``weight_ih`` ``(3H, I)``, ``weight_hh`` ``(3H, H)``,
    ``bias_ih``, ``bias_hh`` ``(3H,)``) as the ONNX GRU operator (``linear_before_reset=1``,
    opset 14): ``x`` ``(T, N, I)``, ``h0`` ``(1, N, H)`` -> ``y`` ``(T, 1, N, H)``, ``hn``
    ``(1, N, H)``. ``steps``, ``batch``: fixed sizes, or names of dynamic ones."""
    onnx = _require_onnx()
    from onnx import helper

    g = _Graph(14)
    H, I = weights["weight_hh"].shape[1], weights["weight_ih"].shape[1]
    x = g.input("x", g.types.FLOAT, [steps, batch, I])
    h0 = g.input("h0", g.types.FLOAT, [1, batch, H])
    y, hn = _recurrent_operator(g, "GRU", [weights], x, h0=h0, linear_before_reset=1)
    g.output("y", y, g.types.FLOAT, [steps, 1, batch, H])
    g.output("hn", hn, g.types.FLOAT, [1, batch, H])
    model = helper.make_model(g.graph("grukit_gru"), opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model)
    return model
