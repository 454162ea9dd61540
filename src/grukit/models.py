"""Models the tasks train: a recurrent stack of any grukit variant with a linear read-out."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from grukit.rnn import GRU

__all__ = ["SequenceModel"]


def _dropout_data(x: Tensor | PackedSequence, p: float, training: bool) -> Tensor | PackedSequence:
    if p == 0 or not training:
        return x
    if isinstance(x, PackedSequence):
        return x._replace(data=F.dropout(x.data, p, True))
    return F.dropout(x, p, True)


class SequenceModel(nn.Module):
    """``x -> dropout -> GRU stack -> dropout -> Linear``: one output vector per time step.

    input: ``(L, N, input_size)`` or a PackedSequence of such rows; returns logits of the same
    layout with ``output_size`` features, and the final state of the recurrent stack.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        variant: str = "gru",
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        output_dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.rnn = GRU(
            input_size, hidden_size, num_layers,
            dropout=dropout if num_layers > 1 else 0.0, variant=variant, backend=backend,
        )  # fmt: skip
        self.head = nn.Linear(hidden_size, output_size)
        self.input_dropout = input_dropout
        self.output_dropout = output_dropout

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
