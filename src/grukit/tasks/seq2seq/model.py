"""The RNN encoder-decoder of Cho et al. 2014 (arXiv 1406.1078), with the additive attention of
Bahdanau et al. 2014 (arXiv 1409.0473) as an option, over any grukit variant.

Shapes: ``S`` source steps, ``T`` target steps, ``N`` batch, ``E`` embedding width, ``H``
units per layer-direction, ``D`` encoder directions, ``C = D * H`` the width of the summary,
``L`` layers, ``V`` the target vocabulary, ``A`` the attention width (``H``).

Encoder: source ids ``(S, N)`` -> embedding -> a (bi)directional recurrent stack, run on a
*packed* batch so that padding never reaches a state. Its summary ``c`` ``(N, C)`` is the top
layer's final state of each direction, concatenated (forward: after each sequence's last valid
token; reverse: after its first).

Decoder (unidirectional, ``L`` layers of ``H``): the state starts at
``s_0 = tanh(W_b c)`` (each layer its own slice; an LSTM's cell starts at 0), and step ``t``
reads ``x_t = [E y_{t-1}; c]`` (Cho et al.: the context vector feeds every step), with
attention ``x_t = [E y_{t-1}; c; a_t]``, where, for encoder outputs ``h_j`` ``(C,)`` and the
top layer's previous state ``s_{t-1}``::

    e_tj = v^T tanh(W_a s_{t-1} + U_a h_j)      (-inf where j is padding)
    alpha_tj = softmax_j(e_tj)                 a_t = sum_j alpha_tj h_j

The read-out is ``logits_t = W_o [o_t; x_t]`` (``o_t`` the top layer's output): it sees the
state, the previous token and the context, as Cho et al.'s ``g(s_t, y_{t-1}, c)``.

Teacher forcing at ratio 1 without attention runs the decoder over the whole target in one
recurrent call (the fused kernel's sequence path); attention or a ratio below 1 steps with
:meth:`grukit.GRU.step`, feeding the true token with probability ``ratio`` and the model's own
argmax otherwise (scheduled sampling, Bengio et al. 2015).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from grukit.models import _dropout_data, _final_hidden, recurrent_stack

__all__ = ["Encoded", "Seq2Seq"]


@dataclass
class Encoded:
    """What the decoder reads of a source batch."""

    outputs: Tensor  # (S, N, C) top-layer outputs, zeros at padded steps
    summary: Tensor  # (N, C) the context vector c
    mask: Tensor  # (S, N) bool, True at valid steps
    keys: Tensor | None  # (S, N, A) U_a h_j (attention only)

    def expand(self, rows: int) -> Encoded:
        """A batch of one source repeated ``rows`` times (beam search)."""
        S, C = self.outputs.shape[0], self.outputs.shape[2]
        keys = None if self.keys is None else self.keys.expand(S, rows, self.keys.shape[2])
        return Encoded(
            self.outputs.expand(S, rows, C), self.summary.expand(rows, C),
            self.mask.expand(S, rows), keys,
        )  # fmt: skip


def _select_state(state: Any, rows: Tensor) -> Any:
    """The decoder state (``(L, N, H)`` or an LSTM's ``(h, c)``) of batch rows ``rows``."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, rows) for s in state)
    return state.index_select(1, rows)


class Seq2Seq(nn.Module):
    """Encoder-decoder over token ids (see the module docstring for the equations).

    ``forward(source (S, N), lengths (N,), target_in (T, N))`` -> logits ``(T, N, V)``, where
    ``target_in`` is ``<bos>`` followed by the target (the outputs are scored against the target
    followed by ``<eos>``). ``greedy`` and ``beam_search`` decode.
    """

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        model: Any,
        cell: Any = None,
        *,
        embedding_size: int,
        attention: bool = False,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
    ) -> None:
        super().__init__()
        H, L = model.hidden_size, model.num_layers
        self.directions = 2 if model.bidirectional else 1
        C = self.directions * H
        self.hidden_size, self.num_layers, self.attention = H, L, attention
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.input_dropout, self.output_dropout = model.input_dropout, model.output_dropout
        self.source_embedding = nn.Embedding(source_vocab_size, embedding_size, padding_idx=pad_id)
        self.target_embedding = nn.Embedding(target_vocab_size, embedding_size, padding_idx=pad_id)
        self.encoder = recurrent_stack(embedding_size, model, cell)
        decoder_model = copy.copy(model)
        decoder_model.bidirectional = False
        step_width = embedding_size + C * (2 if attention else 1)
        self.decoder = recurrent_stack(step_width, decoder_model, cell)
        self.lstm = model.variant == "lstm"
        self.bridge = nn.Linear(C, L * H)  # s_0 = tanh(W_b c)
        if attention:
            self.attention_query = nn.Linear(H, H, bias=False)  # W_a
            self.attention_key = nn.Linear(C, H)  # U_a (and the score's bias)
            self.attention_score = nn.Linear(H, 1, bias=False)  # v
        self.head = nn.Linear(H + step_width, target_vocab_size)

    # ------------------------------------------------------------------ encoder

    def encode(self, source: Tensor, lengths: Tensor) -> Encoded:
        """source ``(S, N)`` ids, lengths ``(N,)`` (each >= 1) -> :class:`Encoded`."""
        S = source.shape[0]
        x = _dropout_data(self.source_embedding(source), self.input_dropout, self.training)
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        out, state = self.encoder(packed)
        outputs, _ = pad_packed_sequence(out, total_length=S)  # (S, N, C), input order
        summary = torch.cat(list(_final_hidden(state)[-self.directions :]), dim=-1)
        steps = torch.arange(S, device=source.device)[:, None]
        mask = steps < lengths.to(source.device)[None, :]
        keys = self.attention_key(outputs) if self.attention else None
        return Encoded(outputs, summary, mask, keys)

    def initial_state(self, encoded: Encoded) -> Any:
        """``s_0 = tanh(W_b c)``: ``(L, N, H)``, or ``(s_0, 0)`` for an LSTM."""
        N = encoded.summary.shape[0]
        h = torch.tanh(self.bridge(encoded.summary)).view(N, self.num_layers, self.hidden_size)
        h = h.transpose(0, 1).contiguous()
        return (h, torch.zeros_like(h)) if self.lstm else h

    def attend(self, query: Tensor, encoded: Encoded) -> tuple[Tensor, Tensor]:
        """Additive attention: query ``(N, H)`` (``s_{t-1}``) -> context ``a_t`` ``(N, C)`` and
        weights ``alpha_t`` ``(N, S)``, exactly 0 at padded steps."""
        assert encoded.keys is not None
        energy = torch.tanh(encoded.keys + self.attention_query(query)[None])
        scores = self.attention_score(energy).squeeze(-1)  # (S, N)
        scores = scores.masked_fill(~encoded.mask, float("-inf"))
        weights = torch.softmax(scores, dim=0)
        context = (weights.unsqueeze(-1) * encoded.outputs).sum(0)
        return context, weights.transpose(0, 1)

    # ------------------------------------------------------------------ decoder

    def _readout(self, out: Tensor, x: Tensor) -> Tensor:
        both = torch.cat([out, x], dim=-1)
        return self.head(_dropout_data(both, self.output_dropout, self.training))

    def decode_step(
        self, tokens: Tensor, state: Any, encoded: Encoded
    ) -> tuple[Tensor, Any, Tensor | None]:
        """One decoder step: previous tokens ``(N,)`` -> logits ``(N, V)``, the new state and
        the attention weights ``(N, S)`` (None without attention)."""
        emb = _dropout_data(self.target_embedding(tokens), self.input_dropout, self.training)
        parts, weights = [emb, encoded.summary], None
        if self.attention:
            top = _final_hidden(state)[-1]  # s_{t-1} of the top layer
            context, weights = self.attend(top, encoded)
            parts.append(context)
        x = torch.cat(parts, dim=-1)
        out, state = self.decoder.step(x, state)
        return self._readout(out, x), state, weights

    def forward(
        self,
        source: Tensor,
        lengths: Tensor,
        target_in: Tensor,
        *,
        teacher_forcing: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Logits ``(T, N, V)`` of each target position; below ratio 1, each step feeds the
        true previous token with probability ``teacher_forcing`` (per sequence and step, drawn
        from ``generator``), else the model's argmax."""
        encoded = self.encode(source, lengths)
        state = self.initial_state(encoded)
        T, N = target_in.shape
        if teacher_forcing >= 1 and not self.attention:  # the whole target in one call
            emb = self.target_embedding(target_in)
            emb = _dropout_data(emb, self.input_dropout, self.training)
            x = torch.cat([emb, encoded.summary.expand(T, N, -1)], dim=-1)
            out, _ = self.decoder(x, state)
            return self._readout(out, x)
        logits, tokens = [], target_in[0]
        for t in range(T):
            step_logits, state, _ = self.decode_step(tokens, state, encoded)
            logits.append(step_logits)
            if t + 1 < T:
                tokens = target_in[t + 1]
                if teacher_forcing < 1:
                    coin = torch.rand(N, generator=generator).to(tokens.device)
                    own = step_logits.detach().argmax(-1)
                    tokens = torch.where(coin < teacher_forcing, tokens, own)
        return torch.stack(logits)

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def greedy(self, source: Tensor, lengths: Tensor, max_steps: int) -> Tensor:
        """The argmax decode ``(N, steps)`` (``steps <= max_steps``): each row ends with its
        first ``<eos>``, then ``<pad>``; rows that never emit ``<eos>`` fill all steps."""
        encoded = self.encode(source, lengths)
        state = self.initial_state(encoded)
        N = source.shape[1]
        tokens = torch.full((N,), self.bos_id, dtype=torch.long, device=source.device)
        done = torch.zeros(N, dtype=torch.bool, device=source.device)
        out = []
        for _ in range(max_steps):
            logits, state, _ = self.decode_step(tokens, state, encoded)
            tokens = logits.argmax(-1)
            out.append(tokens.masked_fill(done, self.pad_id))
            done |= tokens == self.eos_id
            if bool(done.all()):
                break
        if not out:
            return torch.empty(N, 0, dtype=torch.long, device=source.device)
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def beam_search(
        self, source: Tensor, width: int, max_steps: int, length_penalty: float = 1.0
    ) -> list[int]:
        """The best of ``width`` beams for one source ``(S,)``: the ids before ``<eos>``.

        Each step extends every live beam by every token and keeps, of the ``2 * width`` best
        by total log-probability, those ending in ``<eos>`` among the first ``width`` as
        finished and the first ``width`` others as live; it stops when ``width`` beams have
        finished (or after ``max_steps``). Finished beams are ranked by
        ``log p / length ** length_penalty`` (length counts ``<eos>``; 0: no normalisation).
        Width 1 is the greedy decode.
        """
        device = source.device
        encoded = self.encode(source[:, None], torch.tensor([source.shape[0]]))
        state = self.initial_state(encoded)
        live: list[list[int]] = [[]]
        scores = torch.zeros(1, dtype=torch.float64, device=device)
        last = torch.tensor([self.bos_id], device=device)
        finished: list[tuple[float, list[int]]] = []

        def normalised(score: float, length: int) -> float:
            return score / length**length_penalty if length_penalty else score

        for _ in range(max_steps):
            logits, state, _ = self.decode_step(last, state, encoded.expand(len(live)))
            total = scores[:, None] + torch.log_softmax(logits.double(), dim=-1)
            V = total.shape[1]
            best = total.view(-1).topk(min(2 * width, total.numel()))
            rows, new_live, new_scores, new_last = [], [], [], []
            for rank, (score, index) in enumerate(
                zip(best.values.tolist(), best.indices.tolist(), strict=True)
            ):
                beam, token = divmod(index, V)
                if token == self.eos_id:
                    if rank < width:
                        finished.append((normalised(score, len(live[beam]) + 1), live[beam]))
                    continue
                rows.append(beam)
                new_live.append([*live[beam], token])
                new_scores.append(score)
                new_last.append(token)
                if len(new_live) == width:
                    break
            if len(finished) >= width or not new_live:
                break
            index = torch.tensor(rows, device=device)
            state = _select_state(state, index)
            live, last = new_live, torch.tensor(new_last, device=device)
            scores = torch.tensor(new_scores, dtype=torch.float64, device=device)
        if not finished:  # nothing ended within max_steps: the best live beam
            finished = [
                (normalised(float(s), len(b)), b) for s, b in zip(scores, live, strict=True)
            ]
        return max(finished, key=lambda f: f[0])[1]
