"""grukit: the GRU family for PyTorch.

``grukit.GRU`` is a drop-in for ``torch.nn.GRU`` that also runs the GRU variants of the
literature (``variant=``) on a pure-PyTorch reference or fused CPU kernels (``backend=``).
"""

from grukit.cell_options import CellOptions, LayerMasks
from grukit.rnn import GRU, GRUCell, count_parameters
from grukit.variants import ALL_VARIANTS, BASELINES, VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "GRUCell",
    "count_parameters",
    "CellOptions",
    "LayerMasks",
    "ALL_VARIANTS",
    "BASELINES",
    "VARIANTS",
    "Variant",
    "get_variant",
    "GRUClassifier",
    "GRUForecaster",
    "__version__",
]


def __getattr__(name: str) -> object:
    # the estimators pull in the training system: imported on first use
    if name in ("GRUClassifier", "GRUForecaster"):
        from grukit import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'grukit' has no attribute {name!r}")
