"""The GRU family: what each variant computes, defined once.

A variant is a small description: which pre-activation *blocks* it has, what feeds each block
(the input ``x`` through ``weight_ih``, the state ``h`` through ``weight_hh``, a bias), where the
reset gate acts, and which family's update rule combines them. The reference step
(:func:`grukit.reference.cell_step`) and the fused C++ kernel both read this description; neither
keeps a copy per variant.

Update-gate convention
----------------------
grukit writes every variant with one update rule, the one of Cho et al. 2014, ``torch.nn.GRU``,
cuDNN and Keras, where the update gate ``z`` is the share of the old state that is *kept*::

    h' = (1 - z) * n + z * h

Chung et al. 2014 and Dey & Salem 2017 write ``h' = (1 - z) * h + z * n`` instead: their gate
is ``1 - z``. Because ``1 - sigmoid(a) = sigmoid(-a)``, that is the same model with the gate's
weights and bias negated: same function class, same parameter count. The minimal gated unit
(Zhou et al. 2016) and minGRU (Feng et al. 2024) are parametrised as in their papers by the gate
that *writes* (``f``, resp. ``z``), so there the kept share is ``1 - f`` (``1 - z``).

Shapes: ``N`` batch, ``H`` hidden size, ``H_in`` input size. ``sigma`` is the logistic sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Block",
    "Variant",
    "VARIANTS",
    "BASELINES",
    "ALL_VARIANTS",
    "get_variant",
    "check_variant_name",
]


@dataclass(frozen=True)
class Block:
    """One pre-activation block of ``H`` units: ``a = [W x + b_i] + [U h + b_h]``.

    ``x``: the block reads the input (rows in ``weight_ih``, bias in ``bias_ih``).
    ``h``: the block reads the state (rows in ``weight_hh``, bias in ``bias_hh``).
    ``bias``: the block has a bias. Like ``torch.nn.GRU``, a block fed by both ``x`` and ``h``
    has two bias vectors (``b_i`` and ``b_h``); a block fed by one source has one; a gate fed by
    neither (GRU3, MGU3) is its bias alone, stored in ``bias_hh``.
    """

    name: str
    x: bool
    h: bool
    bias: bool = True


@dataclass(frozen=True)
class Variant:
    """Description of one recurrent cell (see the module docstring for the conventions).

    family:
      - ``"gru"``: blocks ``(r, z, n)``; ``r = sigma(a_r)``, ``z = sigma(a_z)`` (kept share),
        ``h' = (1 - z) * n + z * h``.
      - ``"mgu"``: blocks ``(f, n)``; one forget gate ``f = sigma(a_f)`` acts as reset gate and
        as write gate: ``h' = (1 - f) * h + f * n``.
      - ``"mingru"``: blocks ``(z, n)`` fed by ``x`` only; ``z = sigma(a_z)`` (written share),
        ``n = g(a_n)`` with ``g(a) = a + 1/2`` for ``a >= 0`` and ``sigma(a)`` below (positive,
        for the log-space scan), ``h' = (1 - z) * h + z * n``.
    reset:
      - ``"after"``: ``n = tanh(a_n^x + r * (U_n h + b_hn))`` (cuDNN / torch.nn.GRU).
      - ``"before"``: ``n = tanh(a_n^x + U_n (r * h) + b_hn)`` (Cho et al. 2014; Keras
        ``reset_after=False``); for MGU the reset gate is ``f``.
      - ``"none"``: the candidate does not read ``h`` (minGRU).
    """

    name: str
    family: str
    reset: str
    blocks: tuple[Block, ...]
    title: str
    source: str
    equations: str
    paper_convention: str = ""
    x_blocks: tuple[str, ...] = field(init=False)
    h_blocks: tuple[str, ...] = field(init=False)
    bias_ih_blocks: tuple[str, ...] = field(init=False)
    bias_hh_blocks: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = [b.name for b in self.blocks]
        if names[-1] != "n":
            raise AssertionError(f"{self.name}: the candidate block 'n' must come last")
        setters = {
            "x_blocks": tuple(b.name for b in self.blocks if b.x),
            "h_blocks": tuple(b.name for b in self.blocks if b.h),
            "bias_ih_blocks": tuple(b.name for b in self.blocks if b.bias and b.x),
            "bias_hh_blocks": tuple(b.name for b in self.blocks if b.bias and (b.h or not b.x)),
        }
        for key, value in setters.items():
            object.__setattr__(self, key, value)

    @property
    def gates(self) -> tuple[Block, ...]:
        """The gate blocks (every block but the candidate ``n``)."""
        return self.blocks[:-1]

    @property
    def has_recurrent_weights(self) -> bool:
        return bool(self.h_blocks)

    @property
    def needs_bias(self) -> bool:
        """True when some gate is a bias alone (GRU3, MGU3): ``bias=False`` leaves it constant."""
        return any(not (g.x or g.h) for g in self.gates)

    def parameter_shapes(
        self, input_size: int, hidden_size: int, bias: bool = True
    ) -> dict[str, tuple[int, ...]]:
        """Shapes of one layer-direction's parameters, named as in ``torch.nn.GRU``."""
        H = hidden_size
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (len(self.x_blocks) * H, input_size)}
        if self.h_blocks:
            shapes["weight_hh"] = (len(self.h_blocks) * H, H)
        if bias:
            if self.bias_ih_blocks:
                shapes["bias_ih"] = (len(self.bias_ih_blocks) * H,)
            if self.bias_hh_blocks:
                shapes["bias_hh"] = (len(self.bias_hh_blocks) * H,)
        return shapes

    def count_parameters(self, input_size: int, hidden_size: int, bias: bool = True) -> int:
        """Closed form of one layer-direction's parameter count.

        With ``m`` inputs and ``n`` units: ``Gx*n*m + Gh*n^2 + (Bi + Bh)*n`` where ``Gx``, ``Gh``
        count the blocks fed by ``x`` and ``h`` and ``Bi``, ``Bh`` the bias vectors, e.g.
        ``3(n^2 + nm + 2n)`` for ``gru`` (torch keeps two bias vectors per block; Dey & Salem
        2017 count one: ``3(n^2 + nm + n)``).
        """
        n, m = hidden_size, input_size
        total = len(self.x_blocks) * n * m + len(self.h_blocks) * n * n
        if bias:
            total += (len(self.bias_ih_blocks) + len(self.bias_hh_blocks)) * n
        return total


def _gru_like(name: str, gate_x: bool, gate_h: bool, gate_bias: bool, reset: str, **doc) -> Variant:
    return Variant(
        name=name,
        family="gru",
        reset=reset,
        blocks=(
            Block("r", gate_x, gate_h, gate_bias),
            Block("z", gate_x, gate_h, gate_bias),
            Block("n", True, True, True),
        ),
        **doc,
    )


def _mgu_like(name: str, gate_x: bool, gate_h: bool, gate_bias: bool, **doc) -> Variant:
    return Variant(
        name=name,
        family="mgu",
        reset="before",
        blocks=(Block("f", gate_x, gate_h, gate_bias), Block("n", True, True, True)),
        **doc,
    )


_CANDIDATE_BEFORE = "n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)"
_UPDATE_GRU = "h' = (1 - z) * n + z * h"
_DEY_SALEM = (
    "Dey & Salem write h' = (1 - z) h + z n: their z is grukit's 1 - z "
    "(gate weights negated); the candidate is Chung et al.'s (reset before the matmul)."
)
_MGU_CANDIDATE = "n = tanh(W_in x + b_in + W_hn (f * h) + b_hn);  h' = (1 - f) * h + f * n"

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _gru_like(
            "gru",
            True,
            True,
            True,
            "after",
            title="GRU, reset after the recurrent matmul (cuDNN / torch.nn.GRU)",
            source="Cho et al. 2014 (arXiv 1406.1078), cuDNN form; equals torch.nn.GRU",
            equations=(
                "r = sigma(W_ir x + b_ir + W_hr h + b_hr);  "
                "z = sigma(W_iz x + b_iz + W_hz h + b_hz);  "
                "n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  " + _UPDATE_GRU
            ),
            paper_convention="same as torch.nn.GRU and Keras reset_after=True",
        ),
        _gru_like(
            "gru_reset_before",
            True,
            True,
            True,
            "before",
            title="GRU, reset before the recurrent matmul (original)",
            source="Cho et al. 2014 (arXiv 1406.1078); Keras reset_after=False",
            equations=(
                "r = sigma(W_ir x + b_ir + W_hr h + b_hr);  "
                "z = sigma(W_iz x + b_iz + W_hz h + b_hz);  "
                + _CANDIDATE_BEFORE
                + ";  "
                + _UPDATE_GRU
            ),
            paper_convention=(
                "Cho et al. use the same z; Chung et al. 2014 write h' = (1 - z) h + z n "
                "(their z is grukit's 1 - z)."
            ),
        ),
        _gru_like(
            "gru1",
            False,
            True,
            True,
            "before",
            title="GRU1: gates from the state and a bias",
            source="Dey & Salem 2017 (arXiv 1701.05923)",
            equations=(
                "r = sigma(W_hr h + b_hr);  z = sigma(W_hz h + b_hz);  "
                + _CANDIDATE_BEFORE
                + ";  "
                + _UPDATE_GRU
            ),
            paper_convention=_DEY_SALEM,
        ),
        _gru_like(
            "gru2",
            False,
            True,
            False,
            "before",
            title="GRU2: gates from the state alone",
            source="Dey & Salem 2017 (arXiv 1701.05923)",
            equations=(
                "r = sigma(W_hr h);  z = sigma(W_hz h);  " + _CANDIDATE_BEFORE + ";  " + _UPDATE_GRU
            ),
            paper_convention=_DEY_SALEM,
        ),
        _gru_like(
            "gru3",
            False,
            False,
            True,
            "before",
            title="GRU3: gates from a bias alone",
            source="Dey & Salem 2017 (arXiv 1701.05923)",
            equations=(
                "r = sigma(b_r);  z = sigma(b_z);  " + _CANDIDATE_BEFORE + ";  " + _UPDATE_GRU
            ),
            paper_convention=_DEY_SALEM,
        ),
        _mgu_like(
            "mgu",
            True,
            True,
            True,
            title="Minimal gated unit: one forget gate",
            source="Zhou et al. 2016 (arXiv 1603.09420)",
            equations="f = sigma(W_if x + b_if + W_hf h + b_hf);  " + _MGU_CANDIDATE,
            paper_convention="as in the paper (f writes; grukit's kept share is 1 - f)",
        ),
        _mgu_like(
            "mgu1",
            False,
            True,
            True,
            title="MGU1: forget gate from the state and a bias",
            source="Heck & Salem 2017 (arXiv 1701.03452)",
            equations="f = sigma(W_hf h + b_hf);  " + _MGU_CANDIDATE,
            paper_convention="as in the paper",
        ),
        _mgu_like(
            "mgu2",
            False,
            True,
            False,
            title="MGU2: forget gate from the state alone",
            source="Heck & Salem 2017 (arXiv 1701.03452)",
            equations="f = sigma(W_hf h);  " + _MGU_CANDIDATE,
            paper_convention="as in the paper",
        ),
        _mgu_like(
            "mgu3",
            False,
            False,
            True,
            title="MGU3: forget gate from a bias alone",
            source="Heck & Salem 2017 (arXiv 1701.03452)",
            equations="f = sigma(b_f);  " + _MGU_CANDIDATE,
            paper_convention="as in the paper",
        ),
        Variant(
            name="mingru",
            family="mingru",
            reset="none",
            blocks=(Block("z", True, False, True), Block("n", True, False, True)),
            title="minGRU: gate and candidate from the input alone",
            source="Feng et al. 2024 (arXiv 2410.01201), log-space version",
            equations=(
                "z = sigma(W_iz x + b_iz);  n = g(W_in x + b_in);  h' = (1 - z) * h + z * n;  "
                "g(a) = a + 1/2 if a >= 0 else sigma(a)"
            ),
            paper_convention=(
                "as in the paper (z writes). A linear recurrence in h: trained with a parallel "
                "log-space scan or the fused kernel."
            ),
        ),
    )
}

#: Baselines that the literature compares against, run by torch's own implementations.
BASELINES: dict[str, str] = {
    "lstm": "LSTM (Hochreiter & Schmidhuber 1997), torch.nn.LSTM",
    "rnn_tanh": "tanh RNN (Elman 1990), torch.nn.RNN(nonlinearity='tanh')",
}

#: Every name accepted by ``variant=``.
ALL_VARIANTS: tuple[str, ...] = (*VARIANTS, *BASELINES)

#: Closed-form blocks of the baselines: (blocks fed by x, blocks fed by h), torch's two biases.
BASELINE_BLOCKS: dict[str, int] = {"lstm": 4, "rnn_tanh": 1}


def check_variant_name(name: object, *, owner: str = "grukit") -> str:
    """Return ``name`` if it is a known variant, else raise a ValueError listing valid names."""
    if not isinstance(name, str) or name not in ALL_VARIANTS:
        raise ValueError(
            f"{owner}: unknown variant {name!r}; valid variants are: {', '.join(ALL_VARIANTS)}"
        )
    return name


def get_variant(name: str) -> Variant:
    """The :class:`Variant` called ``name`` (baselines have none: they run torch's modules)."""
    check_variant_name(name)
    if name in BASELINES:
        raise ValueError(f"{name!r} is a baseline run by torch's own module, not a GRU variant")
    return VARIANTS[name]
