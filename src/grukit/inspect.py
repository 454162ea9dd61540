"""Gate inspection: the gates of every step, layer and direction of a :class:`grukit.GRU`.

:func:`record` (or the :func:`recording` context manager) lets the module run as usual, then
recomputes each layer-direction step by step with the reference recurrence
(:func:`grukit.reference.reference_layer`, whose every step is the variant's own
:func:`grukit.reference.cell_step`) on the same weights, in-cell masks and layer inputs. While
that recomputation runs, a torch function mode notes the outputs of the activations
``cell_step`` computes (its sigmoids: the gates; its ``tanh``, or minGRU's ``g``: the
candidate), so no variant's math is written here a second time. The recomputed states must
equal the module's output and final state (else :class:`RecordingMismatchError`), so the recorded
gates are those of the model that ran, on the fused kernel as on the reference. Nothing stays
installed: the hooks live inside the ``with`` block, and a forward outside it does no extra
work.

Recorded per layer-direction (:class:`LayerRecord`), each ``(T, N, H)`` time-major whatever
the input layout (``T`` steps, ``N`` sequences in input order, ``H`` units; steps after a
packed sequence's end are NaN; ``t`` is the step's index in time, also for the reverse
direction)::

    gru, gru_reset_before, gru1-3:  r, z, n, h   z = the share of h_{t-1} that is *kept*
    mgu, mgu1-3:                    f, n, h      f = the share that is *written*
    mingru:                         z, n, h      z = the share that is *written*

``n`` is the candidate before candidate dropout, ``h`` the state after the step. ``kept`` is the
share of the old state each step keeps, ``k_t = z`` (gru family) or ``1 - f`` (mgu, minGRU
``1 - z``); with zoneout ``p`` it is ``m_t + (1 - m_t) k_t`` (``m_t = p`` in evaluation).

Statistics per unit (:func:`unit_statistics`), over every valid step of every sequence:
``update_rate = mean(1 - k_t)``; ``kept_share = mean(k_t)``; ``saturated[g]``, the fraction of
steps where gate ``g`` is below 0.05 or above 0.95; ``horizon = 1 / (1 - kept_share)`` steps,
the mean lifetime of what a state holds if every step kept the share ``kept_share`` of it (it
decays as ``kept_share ** t``), and ``half_life = log(0.5) / log(kept_share)`` steps, until half
of it is left. Both are infinite (``None`` in JSON) for a unit that keeps everything.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence
from torch.overrides import TorchFunctionMode

from grukit.cell_options import LayerMasks
from grukit.reference import reference_layer
from grukit.rnn import GRU, _layer_call
from grukit.variants import BASELINES, VARIANTS, Variant

__all__ = [
    "LayerRecord",
    "Recorder",
    "Recording",
    "RecordingMismatchError",
    "SATURATION_HIGH",
    "SATURATION_LOW",
    "record",
    "recording",
    "unit_statistics",
]

#: A gate below ``SATURATION_LOW`` or above ``SATURATION_HIGH`` counts as saturated.
SATURATION_LOW, SATURATION_HIGH = 0.05, 0.95

#: Largest difference allowed between recomputed and module states, per dtype (the fused
#: kernel and the reference round differently; float64 agrees to about 1e-15).
_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


class RecordingMismatchError(RuntimeError):
    """The recomputed states differ from the module's: the gates would not be the model's."""


class _ActivationTape(TorchFunctionMode):
    """While active, notes the outputs of sigmoid, tanh and where in call order."""

    KINDS = {torch.sigmoid: "sigmoid", Tensor.sigmoid: "sigmoid", torch.tanh: "tanh",
             Tensor.tanh: "tanh", torch.where: "where"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        kind = self.KINDS.get(func)
        if kind is not None:
            self.calls.append((kind, out))
        return out


def _steps_from_tape(
    v: Variant, calls: list[tuple[str, Tensor]], rows: Sequence[int], H: int
) -> list[tuple[Tensor, Tensor]]:
    """``(gates (n_t, G*H), candidate (n_t, H))`` of each step, in the order the steps ran.

    A step's gates are its first sigmoid (``cell_step`` computes all of them in one call); its
    candidate is the step's last activation: ``tanh``, or the ``where`` of minGRU's ``g``.
    """
    end = "where" if v.family == "mingru" else "tanh"
    steps: list[tuple[Tensor, Tensor]] = []
    gates: Tensor | None = None
    for kind, out in calls:
        if kind == "sigmoid" and gates is None:
            gates = out
        elif kind == end and gates is not None:
            steps.append((gates, out))
            gates = None
    width = len(v.gates) * H
    shapes_ok = len(steps) == len(rows) and all(
        tuple(g.shape) == (n, width) and tuple(c.shape) == (n, H)
        for (g, c), n in zip(steps, rows, strict=False)
    )
    if not shapes_ok:
        raise RecordingMismatchError(
            f"record: grukit.reference.cell_step no longer computes {v.name!r}'s gates in one "
            "sigmoid and its candidate last; grukit.inspect must follow its change"
        )
    return steps


@dataclass(frozen=True)
class LayerRecord:
    """What one layer-direction computed: ``values[name]`` ``(T, N, H)`` for each gate, ``n``
    and ``h``; ``kept`` ``(T, N, H)`` the share of the old state kept (module docstring)."""

    layer: int
    direction: int  # 0 forward, 1 reverse
    values: dict[str, Tensor]
    kept: Tensor

    @property
    def gates(self) -> tuple[str, ...]:
        """The names of the sigmoid gates (``("r", "z")``, ``("f",)`` or ``("z",)``)."""
        return tuple(k for k in self.values if k not in ("n", "h"))

    @property
    def name(self) -> str:
        return f"layer {self.layer}" + (" reverse" if self.direction else "")


@dataclass(frozen=True)
class Recording:
    """The gates of one forward call: ``layers[layer * D + direction]`` and each sequence's
    length ``lengths`` ``(N,)``; ``max_abs_diff`` is the largest difference between the
    recomputed and the module's states, ``backend`` the one the module ran.

    As a sequence it has one entry per layer: ``recording[l]["forward"]["z"]`` (``"reverse"``
    too when bidirectional) is a ``(T, N, H)`` tensor, ``(N, T, H)`` if the module is
    batch-first; the names are the variant's gates, ``"n"`` and ``"h"``."""

    variant: str
    layers: tuple[LayerRecord, ...]
    lengths: Tensor
    directions: int
    max_abs_diff: float
    backend: str | None
    batch_first: bool = False

    def layer(self, layer: int, direction: int = 0) -> LayerRecord:
        return self.layers[layer * self.directions + direction]

    def __len__(self) -> int:
        return len(self.layers) // self.directions

    def __getitem__(self, layer: int) -> dict[str, dict[str, Tensor]]:
        if not -len(self) <= layer < len(self):
            raise IndexError(f"layer {layer} out of range for {len(self)} layer(s)")
        layer %= len(self)
        out = {}
        for d, name in enumerate(("forward", "reverse")[: self.directions]):
            values = self.layer(layer, d).values
            out[name] = {k: v.transpose(0, 1) if self.batch_first else v for k, v in values.items()}
        return out

    def __iter__(self) -> Iterator[dict[str, dict[str, Tensor]]]:
        return (self[i] for i in range(len(self)))

    def statistics(self) -> dict[str, Any]:
        """Per layer-direction, the per-unit statistics of :func:`unit_statistics` and a summary
        (means over units, the median horizon, units whose horizon exceeds 10 steps)."""
        layers = []
        for rec in self.layers:
            units = unit_statistics(rec.values, rec.kept, rec.gates)
            finite = [x if x is not None else math.inf for x in units["horizon"]]
            summary = {
                "update_rate": _mean(units["update_rate"]),
                "kept_share": _mean(units["kept_share"]),
                "median_horizon": _json_float(statistics.median(finite)),
                "units_horizon_over_10": sum(h > 10 for h in finite),
                "saturated": {g: _mean(s) for g, s in units["saturated"].items()},
            }
            layers.append({"layer": rec.layer, "direction": ("forward", "reverse")[rec.direction],
                           "summary": summary, "units": units})  # fmt: skip
        return {
            "variant": self.variant,
            "units": int(self.layers[0].kept.shape[-1]),
            "steps": int(self.lengths.max()),
            "sequences": int(self.lengths.numel()),
            "backend": self.backend,
            "max_abs_diff": self.max_abs_diff,
            "definitions": {
                "kept_share": "mean over steps of the share k_t of the old state a step keeps",
                "update_rate": "mean over steps of 1 - k_t",
                "horizon": "1 / (1 - kept_share) steps (null: infinite)",
                "half_life": "log(0.5) / log(kept_share) steps (null: infinite)",
                "saturated": f"fraction of steps with the gate < {SATURATION_LOW} or > "
                f"{SATURATION_HIGH}",
            },
            "layers": layers,
        }


def _json_float(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else round(x, 6)


def _mean(xs: Sequence[float]) -> float:
    return round(sum(xs) / len(xs), 6)


def unit_statistics(
    values: Mapping[str, Tensor], kept: Tensor, gates: Sequence[str]
) -> dict[str, Any]:
    """Per-unit statistics over the valid (non-NaN) steps of ``kept`` and ``values[g]``
    ``(T, N, H)``: lists of ``H`` floats (``None`` for an infinite horizon or half-life).

    ``kept_share`` k = mean kept share; ``update_rate`` = 1 - k; ``horizon`` = 1 / (1 - k);
    ``half_life`` = log(0.5) / log(k); ``saturated[g]`` = fraction of steps with ``g`` outside
    ``[SATURATION_LOW, SATURATION_HIGH]``.
    """
    flat = kept.reshape(-1, kept.shape[-1]).double()
    valid = ~torch.isnan(flat)
    count = valid.sum(0).clamp(min=1)
    k = torch.where(valid, flat, 0.0).sum(0) / count
    horizon = [1 / (1 - x) if x < 1 else math.inf for x in k.tolist()]
    half_life = [
        math.log(0.5) / math.log(x) if 0 < x < 1 else (math.inf if x >= 1 else 0.0)
        for x in k.tolist()
    ]
    saturated = {}
    for g in gates:
        gv = values[g].reshape(-1, kept.shape[-1]).double()
        out = ((gv < SATURATION_LOW) | (gv > SATURATION_HIGH)) & valid
        saturated[g] = [round(x, 6) for x in (out.sum(0) / count).tolist()]
    return {
        "kept_share": [round(x, 6) for x in k.tolist()],
        "update_rate": [round(1 - x, 6) for x in k.tolist()],
        "horizon": [_json_float(x) for x in horizon],
        "half_life": [_json_float(x) for x in half_life],
        "saturated": saturated,
    }


# ---------------------------------------------------------------------- recomputation


def _check_recordable(module: object) -> GRU:
    if not isinstance(module, GRU):
        raise TypeError(f"record: expected a grukit.GRU, got {type(module).__name__}")
    if module.variant in BASELINES:
        raise ValueError(
            f"record: variant {module.variant!r} runs torch's own module, whose gates grukit "
            "does not see; gate recording covers the GRU family: " + ", ".join(VARIANTS)
        )
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise ValueError(
            "record: in training mode the dropout between layers draws masks that the "
            "recording cannot repeat; call module.eval() (or build it with dropout=0)"
        )
    return module


def _as_rows(module: GRU, input: Tensor | PackedSequence) -> dict[str, Any]:
    """The packed rows ``(R, H_in)`` a forward call on ``input`` runs, with what undoes them."""
    if isinstance(input, PackedSequence):
        return {"data": input.data, "batch_sizes": [int(b) for b in input.batch_sizes],
                "packed": input}  # fmt: skip
    x = input if input.dim() == 3 else input.unsqueeze(0 if module.batch_first else 1)
    if module.batch_first:
        x = x.transpose(0, 1)
    T, N = x.shape[0], x.shape[1]
    return {"data": x.reshape(T * N, x.shape[2]), "batch_sizes": [N] * T, "packed": None}


def _module_rows(module: GRU, input: Any, output: Any) -> tuple[Tensor, Tensor]:
    """The module's output as packed rows ``(R, D*H)`` and h_n ``(D*L, N, H)`` in input order."""
    out, h_n = output
    if isinstance(out, PackedSequence):
        return out.data, h_n
    if input.dim() == 2:
        out, h_n = out.unsqueeze(0 if module.batch_first else 1), h_n.unsqueeze(1)
    if module.batch_first:
        out = out.transpose(0, 1)
    return out.reshape(-1, out.shape[-1]), h_n


def _unpack(rows: Tensor, layout: dict[str, Any]) -> Tensor:
    """Packed rows ``(R, H)`` -> ``(T, N, H)`` in input order, NaN after each sequence's end."""
    packed = layout["packed"]
    if packed is None:
        return rows.view(len(layout["batch_sizes"]), -1, rows.shape[-1])
    padded, _ = pad_packed_sequence(packed._replace(data=rows), padding_value=math.nan)
    return padded


def _record_call(
    module: GRU,
    input: Tensor | PackedSequence,
    hx: Tensor | None,
    masks: Sequence[LayerMasks] | None,
    output: Any,
) -> Recording:
    """Recompute the call ``module(input, hx, masks=masks) -> output`` and note its gates."""
    v = VARIANTS[module.variant]
    H, D = module.hidden_size, 2 if module.bidirectional else 1
    layout = _as_rows(module, input)
    data, batch_sizes = layout["data"], layout["batch_sizes"]
    N, R = batch_sizes[0], data.shape[0]
    packed = layout["packed"]
    if hx is None:
        h0 = data.new_zeros(D * module.num_layers, N, H)
    else:
        h0 = hx if hx.dim() == 3 else hx.unsqueeze(1)
        if packed is not None and packed.sorted_indices is not None:
            h0 = h0.index_select(1, packed.sorted_indices)
    offsets = [0]
    for n in batch_sizes:
        offsets.append(offsets[-1] + n)
    names = [g.name for g in v.gates]
    layers, finals, layer_input = [], [], data
    for layer in range(module.num_layers):
        outs = []
        for direction in range(D):
            index = layer * D + direction
            w, extras = _layer_call(
                "record", module.cell_options, v, module.layer_weights(layer, direction),
                module.layer_norm_gains(layer, direction), (N, R, H), module.training,
                None if masks is None else masks[index], None, index,
            )  # fmt: skip
            tape = _ActivationTape()
            with tape:
                out, h_n = reference_layer(
                    v, layer_input, batch_sizes, h0[index], w, direction == 1, extras
                )
            order = range(len(batch_sizes))
            order = list(reversed(order)) if direction == 1 else list(order)
            steps = _steps_from_tape(v, tape.calls, [batch_sizes[t] for t in order], H)
            gate_rows = data.new_empty(R, len(names) * H)
            cand_rows = data.new_empty(R, H)
            for t, (gates, cand) in zip(order, steps, strict=True):
                gate_rows[offsets[t] : offsets[t + 1]] = gates
                cand_rows[offsets[t] : offsets[t + 1]] = cand
            values = {name: gate_rows[:, i * H : (i + 1) * H] for i, name in enumerate(names)}
            kept = values["z"] if v.family == "gru" else 1 - values[names[0]]
            zone = None if extras is None else extras.zoneout
            if zone is not None:  # zoneout keeps a further share m_t of what the step writes
                kept = zone + (1 - zone) * kept
            values.update(n=cand_rows, h=out)
            layers.append((layer, direction, values, kept))
            outs.append(out)
            finals.append(h_n)
        layer_input = outs[0] if D == 1 else torch.cat(outs, 1)

    out_rows, h_n = _module_rows(module, input, output)
    mine_h_n = torch.stack(finals, 0)
    if packed is not None and packed.unsorted_indices is not None:
        mine_h_n = mine_h_n.index_select(1, packed.unsorted_indices)
    diff = max(
        float((layer_input - out_rows).abs().max()) if R else 0.0,
        float((mine_h_n - h_n).abs().max()) if N else 0.0,
    )
    tolerance = _TOLERANCE.get(data.dtype, 1e-2)
    if not diff <= tolerance:
        raise RecordingMismatchError(
            f"record: the recomputed states differ from the module's by {diff:.3g} (more than "
            f"{tolerance:g} for {data.dtype}): the recording would not describe the model "
            "that ran"
        )
    if packed is None:
        lengths = torch.full((N,), len(batch_sizes), dtype=torch.long)
    else:
        lengths = pad_packed_sequence(packed)[1]
    records = tuple(
        LayerRecord(
            layer,
            direction,
            {k: _unpack(x.detach(), layout) for k, x in values.items()},
            _unpack(kept.expand(R, H).detach(), layout),
        )  # fmt: skip
        for layer, direction, values, kept in layers
    )
    return Recording(
        module.variant, records, lengths, D, diff, module.last_backend, module.batch_first
    )


class Recorder:
    """What :func:`recording` yields: ``calls`` holds one :class:`Recording` per forward call
    made inside the ``with`` block; ``recording`` is the only one."""

    def __init__(self, module: GRU) -> None:
        self.module = module
        self.calls: list[Recording] = []

    @property
    def recording(self) -> Recording:
        if len(self.calls) != 1:
            raise ValueError(f"recording: expected one forward call, got {len(self.calls)}")
        return self.calls[0]

    def _before(self, module: GRU, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # training with in-cell dropout: draw the masks here, so the call and the
        # recomputation use the same ones
        if module.training and module.cell_options.any and kwargs.get("masks") is None:
            input = args[0] if args else kwargs["input"]
            kwargs = {**kwargs, "masks": module.draw_masks(input, kwargs.get("generator"))}
        return args, kwargs

    def _after(self, module: GRU, args: tuple, kwargs: dict, output: Any) -> None:
        input = args[0] if args else kwargs["input"]
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        with torch.no_grad():
            self.calls.append(_record_call(module, input, hx, kwargs.get("masks"), output))


@contextmanager
def recording(module: GRU) -> Iterator[Recorder]:
    """Record the gates of every forward call of ``module`` inside the block::

        with grukit.inspect.recording(gru) as rec:
            out, h_n = gru(x)
        rec.recording.layer(0).values["z"]   # (T, N, H)

    The hooks are removed when the block ends (also on an error). Calls that ``GRU.step``
    serves from its cached fused plans bypass ``forward`` and are not recorded.
    """
    _check_recordable(module)
    recorder = Recorder(module)
    before = module.register_forward_pre_hook(recorder._before, with_kwargs=True)
    after = module.register_forward_hook(recorder._after, with_kwargs=True)
    try:
        yield recorder
    finally:
        before.remove()
        after.remove()


def record(
    module: GRU,
    input: Tensor | PackedSequence,
    hx: Tensor | None = None,
    *,
    masks: Sequence[LayerMasks] | None = None,
    generator: torch.Generator | None = None,
) -> Recording:
    """Run ``module(input, hx, masks=masks, generator=generator)`` and record its gates.

    input: as for :class:`grukit.GRU` (``(L, N, H_in)``, batch-first, unbatched or a
    PackedSequence). Returns a :class:`Recording`; its arrays are ``(T, N, H)`` time-major.
    Raises :class:`RecordingMismatchError` if the recomputation does not reproduce the module's
    states, ValueError for the baselines (``lstm``, ``rnn_tanh``) and for inter-layer dropout
    in training mode.
    """
    with recording(module) as rec:
        module(input, hx, masks=masks, generator=generator)
    return rec.recording


# ---------------------------------------------------------------------- one case of a task

#: Characters of one charlm case: case ``i`` is characters ``[i * C, (i + 1) * C)`` of a split.
CHARLM_CASE_LENGTH = 200


@dataclass(frozen=True)
class Case:
    """One case of a task, as its recurrent stack reads it and as the task shows it.

    rnn_input: ``(T, 1, H_in)`` time-major, the input of ``model.rnn``; view_kind and view: the
    input for :func:`grukit.plots.plot_gates`; label: a title.
    """

    rnn_input: Tensor
    view_kind: str
    view: Any
    label: str


def task_case(task: Any, model: Any, split: str, index: int) -> Case:
    """Case ``index`` of ``split``: a music sequence (``MusicTask.sequence``), a classify case
    (``ClassifyTask.case``), a forecast input window (``ForecastTask.window``) or
    :data:`CHARLM_CASE_LENGTH` characters of a charlm split. Raises ConfigError if out of range.
    """
    from grukit.errors import ConfigError

    name = getattr(task, "name", "")
    if name == "charlm":
        ids = task.data.ids[split]
        size = max(0, math.ceil((ids.numel()) / CHARLM_CASE_LENGTH))
    elif name in ("music", "classify", "forecast"):
        size = task.size(split)
    else:
        raise ConfigError(f"inspect: task {name!r} has no cases to inspect")
    if not 0 <= index < size:
        raise ConfigError(f"--index must be in [0, {size - 1}] for the {split} split, got {index}")
    ref = next(model.rnn.parameters())
    with torch.no_grad():
        if name == "music":
            x = task.sequence(split, index)
            return Case(x[:, None].to(ref), "piano_roll", x.numpy(),
                        f"{split} sequence {index} ({x.shape[0]} frames)")  # fmt: skip
        if name == "classify":
            x, label = task.case(split, index)
            return Case(x[:, None].to(ref), "features", x.numpy(),
                        f"{split} case {index}, class {task.classes[label]}")  # fmt: skip
        if name == "forecast":
            x = task.window(split, index)
            return Case(x[:, None].to(ref), "series", x.numpy(),
                        f"{split} window {index} ({x.shape[0]} steps)")  # fmt: skip
        piece = ids[index * CHARLM_CASE_LENGTH : (index + 1) * CHARLM_CASE_LENGTH]
        x = model.embedding(piece.to(ref.device)[:, None])
        chars = [str(c) for c in task.vocab.decode(piece.tolist())]
        return Case(x, "characters", chars, f"{split} characters {index * CHARLM_CASE_LENGTH}-"
                    f"{index * CHARLM_CASE_LENGTH + len(chars) - 1}")  # fmt: skip


def gate_panels(rec: Recording, sequence: int = 0) -> list[tuple[str, Any, float, float, str]]:
    """The heatmaps of :func:`grukit.plots.plot_gates` for one sequence: every gate, ``n`` and
    ``h`` of every layer-direction, ``(H, T)``, units sorted by kept share (top: keeps most)."""
    family = VARIANTS[rec.variant].family
    panels = []
    for lr in rec.layers:
        T = int(rec.lengths[sequence])
        order = torch.argsort(lr.kept[:T, sequence].double().mean(0), descending=True)
        where = "" if len(rec.layers) == 1 else f", {lr.name}"
        for key, x in lr.values.items():
            x = x[:T, sequence][:, order].T.double().numpy()
            if key in lr.gates:
                meaning = "reset" if key == "r" else "kept" if family == "gru" else "written"
                panels.append((f"{key} ({meaning}){where}", x, 0.0, 1.0, "viridis"))
            elif family == "mingru":  # g and the states are positive, unbounded
                panels.append((f"{key}{where}", x, float(x.min()), float(x.max()), "magma"))
            else:
                panels.append((f"{key}{where}", x, -1.0, 1.0, "RdBu_r"))
    return panels
