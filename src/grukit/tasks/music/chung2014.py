"""Chung et al. 2014 (arXiv 1412.3555), the polyphonic-music comparison: models and Table 2.

Chung et al. trained a tanh-RNN of 100 units, an LSTM of 36 and a GRU of 46 (about 20K
parameters each, sec. 4.1, Table 1) with the same optimiser and budget, and reported the average
negative log-likelihood per time step (Table 2). ``grukit compare`` on the music task trains the
same three (packaged config ``chung2014``) and puts these numbers beside its own.
"""

from __future__ import annotations

import os

__all__ = ["CHUNG_MODELS", "PAPER_CHECKED", "PAPER_TABLE2", "identify_dataset"]

#: Chung et al. 2014, Table 1 (music): (variant, units).
CHUNG_MODELS: tuple[tuple[str, int], ...] = (("rnn_tanh", 100), ("lstm", 36), ("gru", 46))

#: Chung et al. 2014, Table 2: average NLL per time step, (train, test), per data set and model.
#: Only the JSB row has been checked against a source here (a public reproduction quoting the
#: paper); the other rows are transcribed and await a check against the paper's PDF, which
#: ``compare`` and its JSON (``paper_checked``) say.
PAPER_TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "nottingham": {"rnn_tanh": (3.22, 3.13), "gru": (2.79, 3.23), "lstm": (3.08, 3.20)},
    "jsb": {"rnn_tanh": (8.82, 9.19), "gru": (6.94, 8.54), "lstm": (8.15, 8.67)},
    "musedata": {"rnn_tanh": (5.64, 6.23), "gru": (5.06, 5.99), "lstm": (5.18, 6.23)},
    "piano-midi": {"rnn_tanh": (5.64, 9.03), "gru": (4.93, 8.82), "lstm": (6.49, 9.03)},
}

#: Data sets whose Table 2 row has been checked against a source.
PAPER_CHECKED = frozenset({"jsb"})

_JSB_PICKLE_SHA256 = "69dc4c3e52800959ac0ab3b82aa3e5f55285ce64f1705acb3e3a8ef77a5c051c"


def identify_dataset(data: str) -> str | None:
    """The benchmark a ``--data`` value is (by name, or a local file's sha256), else None."""
    from grukit.data.download import REGISTRY, sha256_file
    from grukit.tasks.music.polyphonic import normalise_name

    if not os.path.exists(data):
        name = normalise_name(data)
        return name if name in PAPER_TABLE2 else None
    if os.path.isfile(data):
        known = {e.sha256: e.name for e in REGISTRY.values()}
        known[_JSB_PICKLE_SHA256] = "jsb"
        return known.get(sha256_file(data))
    return None
