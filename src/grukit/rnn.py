"""``grukit.GRU`` and ``grukit.GRUCell``: drop-ins for torch.nn.GRU/GRUCell, with ``variant=``.

The modules own the parameters, input checking, layers, directions and inter-layer dropout; one
layer-direction at a time is handed to a backend (:mod:`grukit.backends`), which runs the
variant's step (:mod:`grukit.variants`) over the sequence.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence

from grukit.backends import check_backend, layer_function, resolve_backend, uses_torch_gru
from grukit.cell_options import CellExtras, CellOptions, LayerMasks, check_masks, draw_masks
from grukit.errors import ArgumentTypeError, InputError, InputTypeError
from grukit.reference import LayerWeights, expanded_weights
from grukit.variants import BASELINE_BLOCKS, BASELINES, VARIANTS, Variant, check_variant_name

__all__ = ["GRU", "GRUCell", "count_parameters"]

_WEIGHT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_NORM_KINDS = ("layer_norm_ih", "layer_norm_hh")  # layer-norm gains of the x and h sides


def count_parameters(
    variant: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    bias: bool = True,
    layer_norm: bool = False,
) -> int:
    """Number of parameters of ``GRU(input_size, hidden_size, num_layers, bias, ...,
    bidirectional=bidirectional, variant=variant, layer_norm=layer_norm)``, in closed form.

    One layer-direction of ``n`` units on ``m`` inputs has ``Gx*n*m + Gh*n^2 + B*n`` parameters
    (:meth:`grukit.variants.Variant.count_parameters`); layers above the first read ``m = D*n``.
    ``layer_norm`` adds one gain per unit of every normalised block: ``(Gx + Gh) * n``.
    """
    check_variant_name(variant, owner="count_parameters")
    for name, value in (
        ("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)
    ):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"count_parameters: {name} must be a positive integer, got {value!r}")
    D = 2 if bidirectional else 1
    total = 0
    for layer in range(num_layers):
        m = input_size if layer == 0 else D * hidden_size
        if variant in BASELINES:
            k = BASELINE_BLOCKS[variant]
            per = k * (hidden_size * m + hidden_size * hidden_size) + (
                2 * k * hidden_size if bias else 0
            )
        else:
            v = VARIANTS[variant]
            per = v.count_parameters(m, hidden_size, bias)
            if layer_norm:
                per += (len(v.x_blocks) + len(v.h_blocks)) * hidden_size
        total += D * per
    return total


def _reset_uniform(module: nn.Module, hidden_size: int) -> None:
    """torch's RNN initialisation: every weight and bias from ``U(-1/sqrt(H), 1/sqrt(H))``, in
    order; layer-norm gains start at 1 (and draw nothing, so the others match torch's draws)."""
    stdv = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    for name, weight in module.named_parameters():
        if name.startswith(_NORM_KINDS):
            nn.init.ones_(weight)
        else:
            nn.init.uniform_(weight, -stdv, stdv)


def _layer_call(
    owner: str,
    options: CellOptions,
    v: Variant,
    w: LayerWeights,
    gains: tuple[Tensor | None, Tensor | None],
    shape: tuple[int, int, int],
    training: bool,
    masks: LayerMasks | None,
    generator: torch.Generator | None,
    index: int,
) -> tuple[LayerWeights, CellExtras | None]:
    """The weights and extras of one layer-direction call: masks drawn (or the given ones
    checked), DropConnect applied to ``weight_hh``, the layer-norm gains attached.

    shape: ``(N, R, H)``, sequences, packed rows, units. Returns ``(w, None)`` for the plain cell.
    """
    if not options.any and masks is None:
        return w, None
    N, R, H = shape
    if masks is None:
        masks = draw_masks(options, v, N, R, H, w.weight_ih, training, generator)
    else:
        check_masks(owner, masks, options, N, R, H, w.weight_hh, w.weight_ih, index)
    if masks.weight is not None:
        assert w.weight_hh is not None
        w = w._replace(weight_hh=w.weight_hh * masks.weight)
    extras = CellExtras(masks.recurrent, masks.candidate, masks.zoneout, *gains)
    return w, (None if extras.empty else extras)


def _check_torch_backend(owner: str, backend: object, options: CellOptions) -> None:
    """``backend="torch"`` is torch's plain GRU kernel: refuse in-cell options with it."""
    if backend == "torch" and options.any:
        raise ValueError(
            f"{owner}: backend='torch' runs torch's own GRU kernel, which has no in-cell "
            "options (recurrent_dropout, candidate_dropout, zoneout, layer_norm, weight_drop); "
            "use backend='auto', 'fused' or 'reference' with them"
        )


def _call_backend(owner: str, module: nn.Module, backend: str) -> str:
    """``backend``, or ``"reference"`` where only the reference can serve the call:

    - under ``torch.jit.trace``: the fused kernels' autograd.Function (with grad) and their
      inference path (without) trace as different graphs, so the trace's check fails, and a
      Python autograd.Function cannot be saved (nor a compiled region traced); the reference
      (and minGRU's scan) trace to plain aten ops;
    - when torch's per-sample gradients (``call_for_per_sample_grads``) hand the module
      ``ExpandedWeight`` parameters, which accept ``F.linear`` only: the reference's per-step
      path keeps to it.
    """
    if backend not in ("reference", "scan") and torch.jit.is_tracing():
        backend = "reference"
    p = module._parameters
    if not expanded_weights(list(p.values())):
        return backend
    options: CellOptions = module.cell_options  # type: ignore[assignment]
    whh, bhh = p.get("weight_hh_l0", p.get("weight_hh")), p.get("bias_hh_l0", p.get("bias_hh"))
    unaligned = whh is not None and bhh is not None and bhh.shape[0] != whh.shape[0]
    if options.layer_norm or options.weight_drop or unaligned:
        what = "layer_norm" if options.layer_norm else "weight_drop" if options.weight_drop else (
            f"variant {module.variant!r} (its bias_hh and weight_hh have different rows)"
        )  # fmt: skip
        raise RuntimeError(
            f"{owner}: torch's expanded weights (call_for_per_sample_grads) cannot run {what}, "
            "which needs more than F.linear on the weights; compute per-sample gradients with "
            "torch.func.vmap(torch.func.grad(loss)) instead"
        )
    return "reference"


class _InCellOptions:
    """The in-cell options as read-only attributes (``module.zoneout``), from ``cell_options``."""

    cell_options: CellOptions

    @property
    def recurrent_dropout(self) -> float:
        return self.cell_options.recurrent_dropout

    @property
    def candidate_dropout(self) -> float:
        return self.cell_options.candidate_dropout

    @property
    def zoneout(self) -> float:
        return self.cell_options.zoneout

    @property
    def layer_norm(self) -> bool:
        return self.cell_options.layer_norm

    @property
    def weight_drop(self) -> float:
        return self.cell_options.weight_drop


def _options_repr(options: CellOptions) -> str:
    return "".join(
        f", {f.name}={getattr(options, f.name)!r}"
        for f in dataclasses.fields(options)
        if getattr(options, f.name)
    )


_SATURATE = 1e30  # a gate pre-activation whose sigmoid is exactly 0 or 1, with zero derivative


def _packed_plan(template: nn.Module, input: PackedSequence, params: dict[str, Tensor]) -> str:
    """How to run torch's LSTM/RNN/GRU ``template`` on ``input``, a PackedSequence. On CPU,
    torch's packed backward grows as the square of the steps (a training step of a GRU-48 on
    MNIST pixels 80x slower than grukit's padded call, an LSTM on 7-29 steps 1.9x slower;
    ``benchmarks/packed_baselines.py``), while a padded call runs oneDNN's fused RNN. Plans:
    ``"padded"`` (every length equal: one padded call), ``"layers"`` (unequal lengths, kept for
    gradients: one padded call per layer-direction, :func:`_packed_by_layer`), ``"packed"``
    (torch's own: on CUDA, or without gradients, where torch's packed forward is as fast)."""
    if input.data.device.type != "cpu":
        return "packed"
    batch_sizes = input.batch_sizes
    if int(batch_sizes[0]) == int(batch_sizes[-1]):
        return "padded"
    grad = torch.is_grad_enabled() and (
        input.data.requires_grad or any(p.requires_grad for p in params.values())
    )
    return "layers" if grad else "packed"


def _select_batch(state: Any, indices: Tensor | None) -> Any:
    """``state`` (a tensor, or an LSTM's pair) with its batch dimension 1 reordered."""
    if state is None or indices is None:
        return state
    if isinstance(state, tuple):
        return tuple(s.index_select(1, indices) for s in state)
    return state.index_select(1, indices)


def _packed_padded(
    template: nn.Module, params: dict[str, Tensor], input: PackedSequence, hx: Any
) -> tuple[PackedSequence, Any]:
    """torch's LSTM/RNN/GRU ``template`` on a PackedSequence whose lengths are all equal, as one
    padded call (plan ``"padded"`` of :func:`_packed_plan`). Output as torch's packed call."""
    data, batch_sizes, sorted_indices, unsorted_indices = input
    T, N = len(batch_sizes), int(batch_sizes[0])
    x = data.view(T, N, data.shape[1])  # every step holds all N rows: packed is padded
    if getattr(template, "batch_first", False):
        x = x.transpose(0, 1)
    args = (x,) if hx is None else (x, _select_batch(hx, sorted_indices))
    out, h_n = functional_call(template, params, args)
    if getattr(template, "batch_first", False):
        out = out.transpose(0, 1)
    out_data = out.reshape(T * N, out.shape[2])
    packed = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
    return packed, _select_batch(h_n, unsorted_indices)


def _packed_by_layer(
    template: nn.Module, params: dict[str, Tensor], input: PackedSequence, hx: Any
) -> tuple[PackedSequence, Any]:
    """torch's LSTM/RNN/GRU ``template`` on a PackedSequence of unequal lengths, as one padded
    call per layer-direction (``torch.lstm`` / ``torch.gru`` / ``torch.rnn_tanh`` on that
    layer's weights). A direction's outputs before a sequence's end do not depend on the
    padding after it, and h_n is the output at step ``length - 1``; the reverse direction runs on
    each sequence reversed within its own length, its outputs reversed back. An LSTM's c_n is
    the padded call's own: an extra input column, 1 on padding steps, drives the input gate to
    exactly 0 and the forget and output gates to exactly 1 there (pre-activations of
    +-1e30, whose sigmoid derivative is exactly 0), so c is carried unchanged to the end and no
    gradient flows through the padding. Dropout between layers as torch's (a fresh mask, in
    training). Output: the PackedSequence and h_n (and c_n), as torch's packed call."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    data, batch_sizes, sorted_indices, unsorted_indices = input
    x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))  # (T, N, F), sorted
    T, N = x.shape[0], x.shape[1]
    layers, H = template.num_layers, template.hidden_size
    D = 2 if template.bidirectional else 1
    lstm = template.mode == "LSTM"
    call = {"GRU": torch.gru, "RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu}
    hx = _select_batch(hx, sorted_indices)
    if hx is None:
        zeros = x.new_zeros(layers * D, N, H)
        hx = (zeros, zeros) if lstm else zeros
    lengths_d = lengths.to(x.device)
    steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    reverse = torch.where(steps < lengths_d, lengths_d - 1 - steps, steps)  # (T, N)
    last, rows = (lengths_d - 1), torch.arange(N, device=x.device)
    if lstm:  # torch's gate order: input, forget, cell, output
        padding = (steps >= lengths_d).to(x.dtype).unsqueeze(2)  # (T, N, 1)
        drive = x.new_tensor([-_SATURATE, _SATURATE, 0.0, _SATURATE]).repeat_interleave(H)
    h_states, c_states = [], []
    for layer in range(layers):
        if lstm:
            x = torch.cat([x, padding], dim=2)
        index = reverse.unsqueeze(2).expand(T, N, x.shape[2])
        outs = []
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            kinds = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if template.bias else ())
            weights = [params[kind + suffix] for kind in kinds]
            if lstm:
                weights[0] = torch.cat([weights[0], drive.unsqueeze(1)], dim=1)
            k = layer * D + d
            inp = x.gather(0, index) if d else x
            flags = (template.bias, 1, 0.0, False, False, False)
            if lstm:
                out, _, c_n = torch.lstm(inp, (hx[0][k : k + 1], hx[1][k : k + 1]), weights, *flags)
                c_states.append(c_n[0])
            else:
                out, _ = call[template.mode](inp, hx[k : k + 1], weights, *flags)
            h_states.append(out[last, rows])
            if d:
                out = out.gather(0, reverse.unsqueeze(2).expand_as(out))
            outs.append(out)
        x = torch.cat(outs, dim=2) if D == 2 else outs[0]
        if layer < layers - 1 and template.dropout and template.training:
            x = F.dropout(x, template.dropout, training=True)
    state: Any = torch.stack(h_states)
    if lstm:
        state = (state, torch.stack(c_states))
    out_data = pack_padded_sequence(x, lengths).data
    packed = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
    return packed, _select_batch(state, unsorted_indices)


def _batch_and_rows(input: Tensor | PackedSequence, batch_first: bool) -> tuple[int, int]:
    """``(N, R)``: sequences and packed rows of a forward call's input."""
    if isinstance(input, PackedSequence):
        return int(input.batch_sizes[0]), int(input.data.shape[0])
    if not isinstance(input, Tensor) or input.dim() not in (2, 3):
        raise ValueError("draw_masks: expected the 2-D or 3-D input (or PackedSequence) of a call")
    if input.dim() == 2:
        return 1, int(input.shape[0])
    T, N = (input.shape[1], input.shape[0]) if batch_first else (input.shape[0], input.shape[1])
    return int(N), int(T * N)


def _refuse_baseline_masks(owner: str, variant: str, masks: object) -> None:
    if masks is not None:
        raise ValueError(
            f"{owner}: variant {variant!r} runs torch's own module, which takes no in-cell "
            "masks; pass masks=None"
        )


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_tensor(owner: str, name: str, t: object, ref: Tensor) -> Tensor:
    """Type, dtype and device of ``t`` against the module's parameter ``ref``."""
    if not isinstance(t, Tensor):
        raise InputTypeError(f"{owner}: expected {name} to be a Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise InputTypeError(
            f"{owner}: expected {name} to be a floating-point tensor, got {t.dtype}"
        )
    if t.dtype != ref.dtype:
        raise InputTypeError(
            f"{owner}: {name} has dtype {t.dtype} but the parameters are {ref.dtype}; "
            f"cast one of them (e.g. module.to({t.dtype}))"
        )
    if t.device != ref.device:
        raise InputError(
            f"{owner}: {name} is on {t.device} but the parameters are on {ref.device}; "
            "move one of them with .to(device)"
        )
    return t


def _check_features(owner: str, x: Tensor, input_size: int) -> None:
    if x.shape[-1] == input_size:
        return
    hint = ""
    if input_size in x.shape[:-1]:
        hint = (
            f" (dimension {list(x.shape).index(input_size)} has {input_size}: features must be "
            "the last dimension)"
        )
    raise InputError(
        f"{owner}: input.size(-1) must be equal to input_size. Expected {input_size}, "
        f"got {x.shape[-1]}{hint}"
    )


class GRU(_InCellOptions, nn.Module):
    r"""A multi-layer gated recurrent network of any grukit variant; a drop-in for ``torch.nn.GRU``.

    With the default ``variant="gru"`` each layer computes, for every time step ``t``
    (``sigma`` the sigmoid, ``*`` the Hadamard product)::

        r_t = sigma(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = sigma(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    exactly as ``torch.nn.GRU``: the same parameters, names, shapes, initialisation, and results
    (this is the cuDNN form, which applies the reset gate after the recurrent matmul; Cho et al.
    2014 apply it before, see ``variant="gru_reset_before"``). Other variants
    (``grukit.variants.ALL_VARIANTS``) change the cell; ``"lstm"`` and ``"rnn_tanh"`` run torch's
    own modules with this same constructor and call (their state follows torch: ``(h, c)`` for
    the LSTM).

    Args:
        input_size: ``H_in``, features per step. hidden_size: ``H``, units per layer-direction.
        num_layers: stacked layers. bias: use biases. batch_first: input/output are
        ``(N, L, *)`` rather than ``(L, N, *)``. dropout: dropout probability on the outputs of
        every layer but the last, in training mode. bidirectional: ``D = 2`` directions.
        variant: the cell (default ``"gru"``). backend: ``"auto"``, ``"fused"``,
        ``"reference"`` or ``"scan"`` (:mod:`grukit.backends`). recurrent_dropout,
        candidate_dropout, zoneout, weight_drop (probabilities in ``[0, 1)``) and layer_norm:
        regularisation inside the cell of every layer and direction
        (:mod:`grukit.cell_options`); the defaults give exactly the plain cell.

    ``forward(input, hx, *, masks=None, generator=None)``: in training mode the in-cell masks
    are drawn from ``generator`` (torch's default one if omitted); ``masks`` (one
    :class:`grukit.LayerMasks` per layer-direction, index ``layer * D + direction``, e.g. from
    :meth:`draw_masks`) fixes them, so two modules with the same weights and masks compute the
    same thing.

    Shapes (``L`` steps, ``N`` batch, ``D`` directions):
        input: ``(L, N, H_in)``, ``(N, L, H_in)`` if ``batch_first``, ``(L, H_in)`` unbatched, or a
        :class:`~torch.nn.utils.rnn.PackedSequence`. hx: ``(D * num_layers, N, H)`` (or
        ``(D * num_layers, H)`` unbatched), zeros if omitted. Returns ``(output, h_n)``: output
        ``(L, N, D * H)`` (same layout rules as the input), h_n ``(D * num_layers, N, H)``.

    Parameters per layer ``k`` (suffix ``_reverse`` for the second direction):
    ``weight_ih_l{k}`` ``(Gx * H, H_in)`` (``D * H`` inputs above layer 0), ``weight_hh_l{k}``
    ``(Gh * H, H)``, ``bias_ih_l{k}``, ``bias_hh_l{k}``; for ``gru`` the blocks are
    ``(W_ir|W_iz|W_in)``, ``Gx = Gh = 3``. All are drawn from ``U(-1/sqrt(H), 1/sqrt(H))``.
    With ``layer_norm``, ``layer_norm_ih_l{k}`` ``(Gx * H,)`` and ``layer_norm_hh_l{k}``
    ``(Gh * H,)`` are the gains of the normalised blocks, initialised to 1.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str = "gru",
        backend: str = "auto",
        recurrent_dropout: float = 0.0,
        candidate_dropout: float = 0.0,
        zoneout: float = 0.0,
        layer_norm: bool = False,
        weight_drop: float = 0.0,
        proj_size: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if proj_size != 0:  # torch.nn.GRU's own answer, a ValueError
            raise ValueError(
                f"{owner}: proj_size argument is only supported for torch.nn.LSTM, not for "
                f"grukit's {variant!r} (got proj_size={proj_size!r})"
            )
        self.variant = check_variant_name(variant, owner=owner)
        self.backend = check_backend(backend, variant, owner)
        self.cell_options = CellOptions(
            recurrent_dropout, candidate_dropout, zoneout, layer_norm, weight_drop
        ).check(variant, owner)
        _check_torch_backend(owner, backend, self.cell_options)
        for name, value in (
            ("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)
        ):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool):
                raise ArgumentTypeError(
                    f"{owner}: {name} must be a positive integer, got {value!r}"
                )
            if value <= 0:
                raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
        for name, value in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(value, bool):  # as torch.nn.GRU: "False" would be truthy
                raise ArgumentTypeError(
                    f"{owner}: {name} should be of type bool, got {type(value).__name__} {value!r}"
                )
        if (
            not isinstance(dropout, (int, float))
            or isinstance(dropout, bool)
            or not 0 <= dropout <= 1
        ):
            raise ValueError(
                f"{owner}: dropout should be a number in range [0, 1] representing the "
                f"probability of an element being zeroed, got {dropout!r}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"{owner}: dropout acts between layers, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers=1",
                stacklevel=2,
            )
        if variant in VARIANTS and not bias and VARIANTS[variant].needs_bias:
            raise ValueError(
                f"{owner}: variant {variant!r} computes its gates from biases alone; "
                "bias=False would leave them constant at 0.5. Use bias=True."
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.last_backend: str | None = None  # the backend that ran the latest forward
        factory = {"device": device, "dtype": dtype}
        D = 2 if bidirectional else 1
        # per layer-direction: LayerWeights' names, then the layer-norm gains' ("" if absent)
        self._weight_names: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else D * hidden_size
            for direction in range(D):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = self._parameter_shapes(layer_input)
                names = []
                for kind in (*_WEIGHT_KINDS, *_NORM_KINDS):
                    if kind in shapes:
                        self.register_parameter(
                            kind + suffix, nn.Parameter(torch.empty(shapes[kind], **factory))
                        )
                        names.append(kind + suffix)
                    else:
                        names.append("")
                self._weight_names.append(names)
        self._torch_template: nn.Module | None = None
        if variant in BASELINES or (variant == "gru" and not self.cell_options.any):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the dropout warning was given above
                cls = {"lstm": nn.LSTM, "rnn_tanh": nn.RNN, "gru": nn.GRU}[variant]
                template = cls(
                    input_size,
                    hidden_size,
                    num_layers,
                    bias=bias,
                    batch_first=batch_first,
                    dropout=dropout,
                    bidirectional=bidirectional,
                    device="meta",
                    dtype=dtype,
                )
            object.__setattr__(self, "_torch_template", template)  # not a submodule
        self.reset_parameters()

    def _parameter_shapes(self, layer_input: int) -> dict[str, tuple[int, ...]]:
        if self.variant in BASELINES:
            k, H = BASELINE_BLOCKS[self.variant], self.hidden_size
            shapes = {"weight_ih": (k * H, layer_input), "weight_hh": (k * H, H)}
            if self.bias:
                shapes.update(bias_ih=(k * H,), bias_hh=(k * H,))
            return shapes
        v = VARIANTS[self.variant]
        shapes = v.parameter_shapes(layer_input, self.hidden_size, self.bias)
        if self.cell_options.layer_norm:
            shapes["layer_norm_ih"] = (len(v.x_blocks) * self.hidden_size,)
            if v.h_blocks:
                shapes["layer_norm_hh"] = (len(v.h_blocks) * self.hidden_size,)
        return shapes

    def reset_parameters(self) -> None:
        """Draw every parameter from ``U(-1/sqrt(H), 1/sqrt(H))``, in torch.nn.GRU's order."""
        _reset_uniform(self, self.hidden_size)

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``torch.nn.GRU`` (grukit keeps no flat weight buffer)."""

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """The parameters per layer-direction, as ``torch.nn.GRU.all_weights`` (then the
        layer-norm gains, with ``layer_norm``)."""
        return [[getattr(self, n) for n in names if n] for names in self._weight_names]

    proj_size: int = 0  # torch.nn.GRU's attribute (grukit has no projections)

    @property
    def mode(self) -> str:
        """torch.nn.RNNBase's ``mode``: ``"GRU"`` for variant ``gru`` (``"LSTM"``,
        ``"RNN_TANH"`` for the baselines); any other variant's name upper-cased (``"MGU"``,
        ``"MINGRU"``), so code that maps a torch mode to torch's kernels takes no other cell
        for torch's."""
        return self.variant.upper()

    @property
    def _all_weights(self) -> list[list[str]]:
        """torch.nn.RNNBase's names of :attr:`all_weights`."""
        return [[n for n in names if n] for names in self._weight_names]

    @property
    def _flat_weights_names(self) -> list[str]:
        """torch.nn.RNNBase's names of :attr:`_flat_weights`: ``weight_ih_l0, weight_hh_l0,
        bias_ih_l0, bias_hh_l0, weight_ih_l0_reverse, ...`` (torch's order)."""
        return [n for names in self._weight_names for n in names if n]

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The parameters in torch's order (:attr:`_flat_weights_names`); read afresh on every
        access, so in step with ``.to()``, ``load_state_dict`` and assignment as torch's is."""
        return [getattr(self, n) for n in self._flat_weights_names]

    def __prepare_scriptable__(self) -> nn.Module:
        from grukit.errors import ScriptingError

        raise ScriptingError(
            f"torch.jit.script cannot compile grukit's {type(self).__name__}: use torch.jit.trace "
            "for a fixed input shape, torch.export.export, or ONNX (grukit.export.to_onnx)"
        )

    def layer_weights(self, layer: int, direction: int = 0) -> LayerWeights:
        """The parameters of one layer-direction, as the backends take them."""
        D = 2 if self.bidirectional else 1
        names = self._weight_names[layer * D + direction][: len(_WEIGHT_KINDS)]
        return LayerWeights(*(getattr(self, n) if n else None for n in names))

    def layer_norm_gains(self, layer: int, direction: int = 0) -> tuple[Tensor | None, ...]:
        """``(layer_norm_ih, layer_norm_hh)`` of one layer-direction (``None`` without)."""
        D = 2 if self.bidirectional else 1
        names = self._weight_names[layer * D + direction][len(_WEIGHT_KINDS) :]
        return tuple(getattr(self, n) if n else None for n in names)

    def draw_masks(
        self, input: Tensor | PackedSequence, generator: torch.Generator | None = None
    ) -> list[LayerMasks]:
        """The in-cell masks a forward call on ``input`` would draw (index ``layer * D +
        direction``), for ``forward(..., masks=...)``. Follows ``self.training``."""
        if self.variant in BASELINES:
            return []
        N, R = _batch_and_rows(input, self.batch_first)
        ref = next(self.parameters())
        v = VARIANTS[self.variant]
        return [
            draw_masks(self.cell_options, v, N, R, self.hidden_size, ref, self.training, generator)
            for _ in self._weight_names
        ]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {
            "num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
            "bidirectional": False, "variant": "gru", "backend": "auto",
        }  # fmt: skip
        for key, default in defaults.items():
            value = getattr(self, key)
            if value != default:
                s += f", {key}={value!r}"
        return s + _options_repr(self.cell_options)

    # ------------------------------------------------------------------ forward

    def _check_hidden(
        self, owner: str, hx: Tensor, expected: tuple[int, ...], ref: Tensor, name: str = "hx"
    ) -> Tensor:
        _check_tensor(owner, name, hx, ref)
        if _shape(hx) != expected:
            hint = ""
            if hx.dim() == len(expected) and len(expected) == 3 and hx.shape[1] != expected[1]:
                hint = (
                    f" (the batch sizes differ: {hx.shape[1]} in {name}, {expected[1]} in the "
                    f"input; is batch_first={self.batch_first} right for this input?)"
                )
            raise InputError(f"{owner}: Expected hidden size {expected}, got {_shape(hx)}{hint}")
        return hx

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | tuple[Tensor, Tensor] | None = None,
        *,
        masks: Sequence[LayerMasks] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor | PackedSequence, Any]:
        owner = type(self).__name__
        ref = getattr(self, self._weight_names[0][0])  # weight_ih_l0 (faster than parameters())
        D = 2 if self.bidirectional else 1
        if isinstance(input, PackedSequence):
            data, batch_sizes_t, sorted_indices, unsorted_indices = input
            _check_tensor(owner, "input", data, ref)
            if data.dim() != 2:
                raise ValueError(
                    f"{owner}: a PackedSequence's data must be 2-D (rows, features), "
                    f"got {data.dim()}-D"
                )
            _check_features(owner, data, self.input_size)
            batch_sizes = [int(b) for b in batch_sizes_t.tolist()]
            if (
                not batch_sizes
                or min(batch_sizes) <= 0
                or any(a < b for a, b in zip(batch_sizes, batch_sizes[1:], strict=False))
                or sum(batch_sizes) != data.shape[0]
            ):
                raise ValueError(
                    f"{owner}: malformed PackedSequence: batch_sizes must be positive and "
                    "non-increasing and sum to the number of rows; build it with "
                    "torch.nn.utils.rnn.pack_padded_sequence(..., enforce_sorted=False) or "
                    "pack_sequence(..., enforce_sorted=False)"
                )
            N, batched = batch_sizes[0], True
        else:
            _check_tensor(owner, "input", input, ref)
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{owner}: Expected input to be 2D or 3D, got {input.dim()}D instead"
                )
            _check_features(owner, input, self.input_size)
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
            if self.batch_first:
                x = x.transpose(0, 1)
            T, N = x.shape[0], x.shape[1]
            if T == 0:
                raise ValueError(
                    f"{owner}: got zero-length sequences (sequence length 0): {_shape(input)}"
                )
            sorted_indices = unsorted_indices = None
        if self.variant in BASELINES:
            _refuse_baseline_masks(owner, self.variant, masks)
            return self._forward_torch(input, hx)
        if masks is None and uses_torch_gru(
            self.backend, self.variant, ref.device, self.cell_options.any
        ):  # cuDNN on CUDA: torch's GRU runs the whole stack
            return self._forward_torch(input, hx)
        if self.backend == "torch":
            raise ValueError(f"{owner}: backend='torch' takes no masks (it has no in-cell options)")
        if masks is not None and len(masks) != len(self._weight_names):
            raise ValueError(
                f"{owner}: masks must hold one LayerMasks per layer-direction "
                f"({len(self._weight_names)}), got {len(masks)}"
            )

        expected = (D * self.num_layers, N, self.hidden_size)
        if hx is None:
            h0 = torch.zeros(expected, dtype=ref.dtype, device=ref.device)
        else:
            if isinstance(hx, tuple):
                raise TypeError(
                    f"{owner}: variant {self.variant!r} takes hx as one Tensor, got a tuple"
                )
            if not batched:
                _check_tensor(owner, "hx", hx, ref)
                if hx.dim() != 2:
                    raise InputError(
                        f"{owner}: For unbatched 2-D input, hx should also be 2-D but got "
                        f"{hx.dim()}-D tensor"
                    )
                hx = hx.unsqueeze(1)
            elif isinstance(hx, Tensor) and hx.dim() != 3:
                raise InputError(
                    f"{owner}: For batched 3-D input, hx should also be 3-D but got "
                    f"{hx.dim()}-D tensor"
                )
            h0 = self._check_hidden(owner, hx, expected, ref)
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)

        if isinstance(input, PackedSequence):
            out_data, h_n = self._run_layers(data, batch_sizes, h0, masks, generator)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return PackedSequence(out_data, batch_sizes_t, sorted_indices, unsorted_indices), h_n
        out_data, h_n = self._run_layers(
            x.reshape(T * N, self.input_size), [N] * T, h0, masks, generator
        )
        out = out_data.view(T, N, D * self.hidden_size)
        if self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            return out.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return out, h_n

    def _run_layers(
        self,
        data: Tensor,
        batch_sizes: Sequence[int],
        h0: Tensor,
        masks: Sequence[LayerMasks] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Layers and directions over packed rows: data ``(R, H_in)``, h0 ``(D*L, N, H)``."""
        variant = VARIANTS[self.variant]
        backend = resolve_backend(self.backend, variant, data.device, data.dtype)
        if batch_sizes[0] == 0:  # an empty batch (as torch: empty outputs, a working backward)
            backend = "reference"
        backend = _call_backend(type(self).__name__, self, backend)
        self.__dict__["last_backend"] = backend  # (nn.Module.__setattr__ is slow per step)
        run = layer_function(backend)
        D = 2 if self.bidirectional else 1
        shape = (batch_sizes[0], data.shape[0], self.hidden_size)
        finals = []
        layer_input = data
        for layer in range(self.num_layers):
            outs = []
            for direction in range(D):
                index = layer * D + direction
                w, extras = _layer_call(
                    type(self).__name__, self.cell_options, variant,
                    self.layer_weights(layer, direction), self.layer_norm_gains(layer, direction),
                    shape, self.training, None if masks is None else masks[index], generator,
                    index,
                )  # fmt: skip
                out, h_n = run(
                    variant, layer_input, batch_sizes, h0[index], w, direction == 1, extras
                )
                outs.append(out)
                finals.append(h_n)
            layer_input = outs[0] if D == 1 else torch.cat(outs, 1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(finals, 0)

    def _forward_torch(self, input: Any, hx: Any) -> tuple[Any, Any]:
        """torch's own LSTM/RNN/GRU on this module's parameters (the baselines; ``gru`` on
        backend ``torch``, or ``auto`` on CUDA)."""
        template = self._torch_template
        assert template is not None
        template.train(self.training)
        self.last_backend = "torch"
        params = dict(self.named_parameters())
        if isinstance(input, PackedSequence):
            plan = _packed_plan(template, input, params)
            if plan == "padded":
                return _packed_padded(template, params, input, hx)
            if plan == "layers":
                return _packed_by_layer(template, params, input, hx)
        args = (input,) if hx is None else (input, hx)
        return functional_call(template, params, args)

    def step(
        self, input: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Any]:
        """Streaming inference: advance every layer by one time step.

        input: ``(N, H_in)`` (or ``(H_in,)`` unbatched), one step; hx: the state returned by
        the previous call (``(num_layers, N, H)``), zeros if omitted. Returns ``(output (N, H),
        state)``. Feeding a sequence step by step gives the same outputs as the whole sequence
        at once (in training mode with in-cell dropout, each call draws its own masks).
        """
        if self.bidirectional:
            raise ValueError(
                f"{type(self).__name__}: step() needs a unidirectional network; the reverse "
                "direction of a bidirectional one reads the whole sequence first"
            )
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            got = f"{input.dim()}-D" if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(
                f"{type(self).__name__}: step() takes one time step, (N, H_in) or (H_in,); "
                f"got {got}"
            )
        plans = self.__dict__.get("_step_plans")  # inference on batched input: the kernel
        if (
            plans is not None and isinstance(hx, Tensor) and not torch.is_grad_enabled()
            and input.dim() == 2 and hx.dim() == 3 and hx.shape[0] == len(plans)
            and self.__dict__.get("backend") in ("auto", "fused")
            and not (self.dropout > 0 and self.training) and not torch.jit.is_tracing()
        ):  # fmt: skip
            x, finals = input, []
            for k, plan in enumerate(plans):
                x = plan(x, hx[k], self._parameters)
                if x is None:
                    break
                finals.append(x)
            else:
                return x, torch.stack(finals, 0)
        if self.variant in BASELINES and input.dim() == 2:
            stepped = self._baseline_step(input, hx)
            if stepped is not None:
                return stepped
        seq = input.unsqueeze(1 if self.batch_first and input.dim() == 2 else 0)
        out, state = self(seq, hx)
        if self.__dict__.get("last_backend") == "fused" and not self.cell_options.any:
            self.__dict__["_step_plans"] = self._make_step_plans()
        return out.squeeze(1 if self.batch_first and input.dim() == 2 else 0), state

    def _baseline_step(self, x: Tensor, hx: Any) -> tuple[Tensor, Any] | None:
        """One step of the LSTM / tanh-RNN baselines through torch's cell functions, layer by
        layer (torch's whole-sequence LSTM reorders its weights on every call, which at one
        step costs far more than the step); None when the call needs the general path."""
        if (self.dropout > 0 and self.training) or x.shape[-1] != self.input_size:
            return None
        L, N, H = self.num_layers, x.shape[0], self.hidden_size
        lstm = self.variant == "lstm"
        if hx is None:
            zeros = x.new_zeros(L, N, H)
            hx = (zeros, zeros) if lstm else zeros
        states = hx if lstm else (hx,)
        if (lstm and not isinstance(hx, tuple)) or not all(
            isinstance(t, Tensor) and t.shape == (L, N, H) and t.dtype == x.dtype
            and t.device == x.device for t in states
        ):  # fmt: skip
            return None
        p = self._parameters
        hs, cs = [], []
        for k in range(L):
            w = [p.get(f"{kind}_l{k}") for kind in _WEIGHT_KINDS]
            if lstm:
                h, c = torch.lstm_cell(x, (hx[0][k], hx[1][k]), *w)
                cs.append(c)
            else:
                h = torch.rnn_tanh_cell(x, hx[k], *w)
            hs.append(h)
            x = h
        return x, ((torch.stack(hs), torch.stack(cs)) if lstm else torch.stack(hs))

    def _make_step_plans(self) -> list | None:
        """One :class:`grukit.fused.StepPlan` per layer (unidirectional, fused, no options)."""
        from grukit.fused import StepPlan

        if self.backend not in ("auto", "fused") or (self.dropout > 0 and self.training):
            return None
        variant = VARIANTS[self.variant]
        plans = []
        for k in range(self.num_layers):
            size = self.input_size if k == 0 else self.hidden_size
            plan = StepPlan.of(variant, self._parameters, size, self.hidden_size, f"_l{k}")
            if plan is None:
                return None
            plans.append(plan)
        return plans

    # ------------------------------------------------------------------ torch interop

    def to_torch(self) -> nn.GRU:
        """A ``torch.nn.GRU`` with this module's weights and settings (``variant="gru"``, no
        in-cell options: the only cell torch computes), on the same device and dtype."""
        from grukit.errors import ExportError

        owner = type(self).__name__
        if self.variant != "gru":
            raise ExportError(
                f"{owner}.to_torch: torch.nn.GRU computes variant 'gru' only, not {self.variant!r}"
            )
        if self.cell_options.any:
            raise ExportError(
                f"{owner}.to_torch: torch.nn.GRU has no in-cell options; this module has"
                f"{_options_repr(self.cell_options)[1:]}"
            )
        ref = self.weight_ih_l0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the one-layer dropout warning was given at build
            module = nn.GRU(
                self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
                batch_first=self.batch_first, dropout=self.dropout,
                bidirectional=self.bidirectional, device=ref.device, dtype=ref.dtype,
            )  # fmt: skip
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    @classmethod
    def from_torch(cls, module: nn.GRU, *, backend: str = "auto") -> GRU:
        """A grukit ``GRU`` (``variant="gru"``, no in-cell options) with the weights and
        settings of ``module``, a ``torch.nn.GRU``, on its device and dtype."""
        from grukit.errors import ExportError

        if not isinstance(module, nn.GRU):
            raise ExportError(
                f"{cls.__name__}.from_torch: expected a torch.nn.GRU, got {type(module).__name__}"
            )
        ref = module.weight_ih_l0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warned about one-layer dropout already
            gru = cls(
                module.input_size, module.hidden_size, module.num_layers, module.bias,
                module.batch_first, module.dropout, module.bidirectional, device=ref.device,
                dtype=ref.dtype, backend=backend,
            )  # fmt: skip
        gru.load_state_dict(module.state_dict())
        return gru.train(module.training)


class GRUCell(_InCellOptions, nn.Module):
    r"""One step of any grukit variant; a drop-in for ``torch.nn.GRUCell``.

    With ``variant="gru"`` it is ``torch.nn.GRUCell`` (same parameters, names, results)::

        r = sigma(W_ir x + b_ir + W_hr h + b_hr);  z = sigma(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = (1 - z) * n + z * h

    Shapes: input ``(N, H_in)`` or ``(H_in,)``; hx ``(N, H)`` or ``(H,)``, zeros if omitted;
    returns ``h'`` of hx's shape. Parameters: ``weight_ih`` ``(Gx * H, H_in)``, ``weight_hh``
    ``(Gh * H, H)``, ``bias_ih``, ``bias_hh`` (and ``layer_norm_ih``, ``layer_norm_hh`` with
    ``layer_norm``). ``variant="lstm"`` is ``torch.nn.LSTMCell`` (state ``(h, c)``) and
    ``"rnn_tanh"`` is ``torch.nn.RNNCell``.

    The in-cell options are those of :class:`GRU`. A cell sees one step per call, so in
    training it draws fresh masks every call; to hold the recurrent-dropout mask over a
    sequence, draw one :class:`grukit.LayerMasks` and pass it as ``masks=`` at every step.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str = "gru",
        backend: str = "auto",
        recurrent_dropout: float = 0.0,
        candidate_dropout: float = 0.0,
        zoneout: float = 0.0,
        layer_norm: bool = False,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.cell_options = CellOptions(
            recurrent_dropout, candidate_dropout, zoneout, layer_norm, weight_drop
        ).check(variant, type(self).__name__)
        _check_torch_backend(type(self).__name__, backend, self.cell_options)
        # one layer, one direction: the parameters of a GRU without the "_l0" suffix
        # (bias as torch.nn.GRUCell reads it: any truthy value means biases)
        # hidden_size 0 (as torch.nn.GRUCell allows): the parameters of one unit, emptied
        empty = isinstance(hidden_size, int) and not isinstance(hidden_size, bool) and (
            hidden_size == 0
        )  # fmt: skip
        inner = GRU(input_size, 1 if empty else hidden_size, 1, bool(bias), device=device,
                    dtype=dtype, variant=variant, backend=backend,
                    layer_norm=layer_norm)  # fmt: skip
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.variant, self.backend = variant, backend
        self.last_backend: str | None = None
        for kind in (*_WEIGHT_KINDS, *_NORM_KINDS):
            if hasattr(inner, kind + "_l0"):
                p = getattr(inner, kind + "_l0")
                if empty:  # every dimension counts units, but weight_ih's inputs
                    shape = (0, input_size) if kind == "weight_ih" else (0,) * p.dim()
                    p = nn.Parameter(p.new_empty(shape))
                self.register_parameter(kind, p)
        self._torch_template: nn.Module | None = None
        if variant in BASELINES or (variant == "gru" and not self.cell_options.any):
            cls = {"lstm": nn.LSTMCell, "rnn_tanh": nn.RNNCell, "gru": nn.GRUCell}[variant]
            object.__setattr__(
                self,
                "_torch_template",
                cls(input_size, hidden_size, bias, device="meta", dtype=dtype),
            )

    def reset_parameters(self) -> None:
        """Draw every parameter from ``U(-1/sqrt(H), 1/sqrt(H))``, as torch.nn.GRUCell does."""
        _reset_uniform(self, self.hidden_size)

    __prepare_scriptable__ = GRU.__prepare_scriptable__

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.variant != "gru":
            s += f", variant={self.variant!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s + _options_repr(self.cell_options)

    def draw_masks(self, batch_size: int, generator: torch.Generator | None = None) -> LayerMasks:
        """Masks for ``batch_size`` rows, to pass as ``masks=`` (e.g. at every step of a
        sequence, which holds the recurrent-dropout mask over it). Follows ``self.training``."""
        if self.variant in BASELINES:
            return LayerMasks()
        return draw_masks(self.cell_options, VARIANTS[self.variant], batch_size, batch_size,
                          self.hidden_size, self.weight_ih, self.training, generator)  # fmt: skip

    def forward(
        self,
        input: Tensor,
        hx: Tensor | tuple[Tensor, Tensor] | None = None,
        *,
        masks: LayerMasks | None = None,
        generator: torch.Generator | None = None,
    ) -> Any:
        plan = self.__dict__.get("_step_plan")  # inference on batched input: straight to the kernel
        if (
            plan is not None and masks is None and hx is not None and not torch.is_grad_enabled()
            and self.__dict__.get("backend") in ("auto", "fused") and not torch.jit.is_tracing()
        ):  # fmt: skip
            out = plan(input, hx, self._parameters)
            if out is not None:
                return out
        owner = type(self).__name__
        ref = self.weight_ih
        _check_tensor(owner, "input", input, ref)
        if input.dim() not in (1, 2):
            raise ValueError(f"{owner}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        _check_features(owner, input, self.input_size)
        if self.variant in BASELINES or (
            masks is None
            and uses_torch_gru(self.backend, self.variant, ref.device, self.cell_options.any)
        ):  # the baselines; gru on backend "torch", or "auto" on CUDA (torch's fused cell)
            _refuse_baseline_masks(owner, self.variant, masks)
            self.last_backend = "torch"
            args = (input,) if hx is None else (input, hx)
            return functional_call(self._torch_template, dict(self.named_parameters()), args)
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            h = torch.zeros(x.shape[0], self.hidden_size, dtype=ref.dtype, device=ref.device)
        else:
            _check_tensor(owner, "hx", hx, ref)
            if hx.dim() != input.dim():
                raise InputError(
                    f"{owner}: Expected hidden to be {input.dim()}D like the input, "
                    f"got {hx.dim()}D instead"
                )
            h = hx if batched else hx.unsqueeze(0)
            if _shape(h) != (x.shape[0], self.hidden_size):
                raise InputError(
                    f"{owner}: Expected hidden size {(x.shape[0], self.hidden_size)}, "
                    f"got {_shape(h)}"
                )
        variant = VARIANTS[self.variant]
        backend = resolve_backend(self.backend, variant, x.device, x.dtype)
        N = x.shape[0]
        if N == 0 or self.hidden_size == 0:  # as torch: empty results, a working backward
            backend = "reference"
        backend = _call_backend(owner, self, backend)
        self.__dict__["last_backend"] = backend  # (nn.Module.__setattr__ is slow per step)
        weights, extras = _layer_call(
            owner, self.cell_options, variant,
            LayerWeights(*(getattr(self, k, None) for k in _WEIGHT_KINDS)),
            (getattr(self, "layer_norm_ih", None), getattr(self, "layer_norm_hh", None)),
            (N, N, self.hidden_size), self.training, masks, generator, 0,
        )  # fmt: skip
        out, _ = layer_function(backend)(variant, x, [N], h, weights, False, extras)
        if backend == "fused" and self.backend in ("auto", "fused") and not self.cell_options.any:
            from grukit.fused import StepPlan

            plan = StepPlan.of(variant, self._parameters, self.input_size, self.hidden_size)
            self.__dict__["_step_plan"] = plan
        return out if batched else out.squeeze(0)
