"""Errors that grukit raises for bad input: each message says what was expected and what came.

The command line prints these as one sentence (no traceback); the Python API raises them.
Each subclasses the built-in exception a caller would naturally catch (ValueError, OSError).
"""

from __future__ import annotations


class GrukitError(Exception):
    """Base class of the errors grukit raises on purpose."""


class DataError(GrukitError, ValueError):
    """A data set is missing, corrupt, truncated, of the wrong format or holds bad values."""


class DownloadError(DataError):
    """A named data set could not be fetched (offline, wrong checksum, server error)."""


class ConfigError(GrukitError, ValueError):
    """A configuration key is unknown, ill-typed or describes an impossible run."""


class CheckpointError(GrukitError, ValueError):
    """A checkpoint or run folder is missing, truncated, corrupt or incompatible."""


class TrainingError(GrukitError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or Inf)."""


class ArgumentTypeError(GrukitError, TypeError, ValueError):
    """A constructor argument has the wrong type: a TypeError, as torch.nn.GRU raises, and a
    ValueError, as grukit raised before, so code that catches either keeps working."""


class ExportError(GrukitError, ValueError):
    """A model cannot be exported or converted (an unsupported module, variant, option or
    opset), or the file to write already exists."""


class ScriptingError(ExportError, RuntimeError):
    """``torch.jit.script`` was asked to compile a grukit module, which it cannot: an
    ExportError (a ValueError) and a RuntimeError, so code that catches either keeps working."""


class InputError(GrukitError, ValueError, RuntimeError):
    """An input or state has the wrong shape, or is on the wrong device: a RuntimeError, as
    torch.nn.GRU raises, and a ValueError, as grukit raised before."""


class InputTypeError(GrukitError, TypeError, ValueError, RuntimeError):
    """An input or state has the wrong type or dtype: a TypeError, as grukit raised before, and
    what torch raises for it (a ValueError from torch.nn.GRU, a RuntimeError from GRUCell)."""
