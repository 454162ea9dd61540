"""Models the tasks train: a recurrent stack of any grukit variant with a task head.

Every model is built from the ``[model]`` section (:class:`grukit.runconfig.ModelConfig`) and
the ``[cell]`` section (:class:`grukit.runconfig.CellConfig`, regularisation inside the cell):
``recurrent_stack`` makes the :class:`grukit.GRU` (any variant, deep, optionally
bidirectional), and each head reads it in its own way:

* :class:`SequenceModel`: a linear read-out at every step (music: next-frame logits);
* :class:`SequenceClassifier`: one vector per sequence, the last *valid* state of each
  direction (forward: step ``T_i``; reverse: step 1) or a mean / max over valid steps, then a
  linear layer to class logits;
* :class:`Forecaster`: the encoder's last state to ``horizon`` future values at once (direct
  multi-horizon), or an autoregressive decoder that feeds each prediction back;
* :class:`LanguageModel`: token ids -> embedding -> recurrent stack -> next-token logits at
  every step, the read-out optionally tied to the embedding.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from grukit.rnn import GRU

__all__ = [
    "Forecaster", "LanguageModel", "SequenceClassifier", "SequenceModel", "detach_state",
    "recurrent_stack",
]  # fmt: skip


def _cell_kwargs(cell: Any) -> dict[str, Any]:
    """The in-cell options of ``cell`` (a CellConfig, a CellOptions or None) as GRU keywords."""
    if cell is None:
        return {}
    return {f.name: getattr(cell, f.name) for f in fields(cell)}


def recurrent_stack(input_size: int, model: Any, cell: Any = None) -> GRU:
    """The :class:`grukit.GRU` that ``model`` (a ModelConfig) and ``cell`` (a CellConfig, or
    None for the plain cell) describe, time-major."""
    return GRU(
        input_size, model.hidden_size, model.num_layers,
        dropout=model.dropout if model.num_layers > 1 else 0.0,
        bidirectional=model.bidirectional, variant=model.variant, backend=model.backend,
        **_cell_kwargs(cell),
    )  # fmt: skip


def detach_state(state: Any) -> Any:
    """A recurrent state (a tensor, or an LSTM's ``(h, c)``) cut from its graph."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def _dropout_data(x: Tensor | PackedSequence, p: float, training: bool) -> Tensor | PackedSequence:
    if p == 0 or not training:
        return x
    if isinstance(x, PackedSequence):
        return x._replace(data=F.dropout(x.data, p, True))
    return F.dropout(x, p, True)


def _final_hidden(state: Any) -> Tensor:
    """``h_n`` ``(layers * directions, N, H)`` of a GRU-family state or an LSTM's ``(h, c)``."""
    return state[0] if isinstance(state, tuple) else state


class SequenceModel(nn.Module):
    """``x -> dropout -> recurrent stack -> dropout -> Linear``: one output per time step.

    input: ``(L, N, input_size)`` or a PackedSequence of such rows; returns logits of the same
    layout with ``output_size`` features, and the final state of the recurrent stack.
    """

    def __init__(self, input_size: int, output_size: int, model: Any, *, cell: Any = None) -> None:
        super().__init__()
        self.rnn = recurrent_stack(input_size, model, cell)
        directions = 2 if model.bidirectional else 1
        self.head = nn.Linear(model.hidden_size * directions, output_size)
        self.input_dropout = model.input_dropout
        self.output_dropout = model.output_dropout

    def forward(self, x: Tensor | PackedSequence, state: Any = None) -> tuple[Any, Any]:
        x = _dropout_data(x, self.input_dropout, self.training)
        out, state = self.rnn(x, state)
        out = _dropout_data(out, self.output_dropout, self.training)
        if isinstance(out, PackedSequence):
            return out._replace(data=self.head(out.data)), state
        return self.head(out), state

    def step(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One time step for generation: x ``(N, input_size)`` -> logits ``(N, output_size)``."""
        out, state = self.rnn.step(x, state)
        return self.head(out), state


POOLINGS = ("last", "mean", "max")


class SequenceClassifier(nn.Module):
    """A packed batch of sequences -> class logits ``(N, num_classes)``.

    ``pooling="last"`` reads ``h_n`` of the top layer: for the forward direction the state after
    each sequence's last valid step, for the reverse direction the state after step 1 (which has
    read the whole sequence backwards); ``"mean"`` / ``"max"`` pool the top layer's outputs over
    each sequence's valid steps only (padding never counts).
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        model: Any,
        pooling: str = "last",
        *,
        cell: Any = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.rnn = recurrent_stack(input_size, model, cell)
        self.directions = 2 if model.bidirectional else 1
        self.pooling = pooling
        self.input_dropout = model.input_dropout
        self.output_dropout = model.output_dropout
        self.head = nn.Linear(model.hidden_size * self.directions, num_classes)

    def features(self, x: PackedSequence) -> Tensor:
        """The pooled vector of each sequence, ``(N, directions * hidden)``, in input order."""
        x = _dropout_data(x, self.input_dropout, self.training)
        out, state = self.rnn(x)
        if self.pooling == "last":
            h = _final_hidden(state)[-self.directions :]  # top layer: (D, N, H), input order
            return torch.cat(list(h), dim=-1)
        padded, lengths = pad_packed_sequence(out)  # (T, N, D*H), sorted order undone
        steps = torch.arange(padded.shape[0], device=padded.device)[:, None]
        valid = (steps < lengths.to(padded.device)[None, :]).unsqueeze(-1)  # (T, N, 1)
        if self.pooling == "mean":
            return (padded * valid).sum(0) / lengths.to(padded)[:, None]
        return padded.masked_fill(~valid, float("-inf")).amax(0)

    def forward(self, x: PackedSequence) -> Tensor:
        z = _dropout_data(self.features(x), self.output_dropout, self.training)
        return self.head(z)


class Forecaster(nn.Module):
    """Windows ``(W, N, inputs)`` -> forecasts ``(N, horizon, targets)`` (scaled units).

    ``decoder="direct"``: ``Linear(h_W) -> horizon * targets`` at once. ``"autoregressive"``:
    the encoder's state is carried on step by step, each step's input being the previous
    prediction (needs the inputs to be the targets only: no covariates).
    """

    def __init__(
        self,
        inputs: int,
        targets: int,
        horizon: int,
        model: Any,
        decoder: str = "direct",
        *,
        cell: Any = None,
    ) -> None:
        super().__init__()
        if decoder not in ("direct", "autoregressive"):
            raise ValueError(f"decoder must be direct or autoregressive, got {decoder!r}")
        if decoder == "autoregressive" and inputs != targets:
            raise ValueError("the autoregressive decoder feeds predictions back: no covariates")
        if model.bidirectional and decoder == "autoregressive":
            raise ValueError("the autoregressive decoder needs a unidirectional encoder")
        self.rnn = recurrent_stack(inputs, model, cell)
        self.directions = 2 if model.bidirectional else 1
        self.horizon, self.targets, self.decoder = horizon, targets, decoder
        self.input_dropout = model.input_dropout
        self.output_dropout = model.output_dropout
        width = model.hidden_size * self.directions
        out = horizon * targets if decoder == "direct" else targets
        self.head = nn.Linear(width, out)

    def forward(self, x: Tensor) -> Tensor:
        last = x[-1, :, : self.targets]  # the latest observed targets: the head predicts a change
        x = _dropout_data(x, self.input_dropout, self.training)
        _, state = self.rnn(x)
        h = torch.cat(list(_final_hidden(state)[-self.directions :]), dim=-1)
        if self.decoder == "direct":
            h = _dropout_data(h, self.output_dropout, self.training)
            delta = self.head(h).view(-1, self.horizon, self.targets)
            return last[:, None, :] + delta
        outputs, y = [], last
        out = h
        for _ in range(self.horizon):
            y = y + self.head(_dropout_data(out, self.output_dropout, self.training))
            outputs.append(y)
            out, state = self.rnn.step(y, state)
        return torch.stack(outputs, dim=1)


class LanguageModel(nn.Module):
    """``ids -> Embedding -> dropout -> recurrent stack -> dropout -> Linear``: next-token logits.

    input: ``(L, N)`` int64 token ids (time-major) and an optional state; returns logits
    ``(L, N, vocab_size)`` and the final state. With ``tie_weights`` the read-out's weight is the
    embedding matrix (Press & Wolf 2017), which needs ``embedding_size == hidden_size``.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int,
        model: Any,
        *,
        cell: Any = None,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        if model.bidirectional:
            raise ValueError("a language model reads the past only: bidirectional must be false")
        if tie_weights and embedding_size != model.hidden_size:
            raise ValueError(
                f"tie_weights needs embedding_size == hidden_size, got {embedding_size} and "
                f"{model.hidden_size}"
            )
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.rnn = recurrent_stack(embedding_size, model, cell)
        self.head = nn.Linear(model.hidden_size, vocab_size)
        if tie_weights:
            self.head.weight = self.embedding.weight
        self.input_dropout = model.input_dropout
        self.output_dropout = model.output_dropout

    def forward(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        x = _dropout_data(self.embedding(ids), self.input_dropout, self.training)
        out, state = self.rnn(x, state)
        return self.head(_dropout_data(out, self.output_dropout, self.training)), state

    def step(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One step for generation: ids ``(N,)`` -> logits ``(N, vocab_size)`` and the state."""
        out, state = self.rnn.step(self.embedding(ids), state)
        return self.head(out), state
