"""Typed run configuration from a dataclass, a TOML file and command-line flags.

A configuration is a plain ``@dataclass`` whose fields all have defaults (a field without
one becomes a required key). Supported field types are ``int``, ``float``, ``str``, ``bool``,
``tuple[T, ...]`` and ``list[T]`` with ``T`` one of those four, and any of these ``| None``.
A field's help text is ``field(metadata={"help": "..."})``.

Values are resolved as: dataclass defaults, then the TOML file, then overrides (usually the
flags given on the command line), then the instance's ``validate()`` method is called if the
class defines one.

Rules:

* Types are checked, not coerced: a TOML ``"46"`` for an ``int`` field is an error. An ``int``
  is accepted for a ``float`` field (and stored as ``float``); a ``bool`` is never accepted for
  an ``int`` or ``float`` field. TOML arrays fill ``tuple``/``list`` fields.
* TOML has no null, so for an optional field (``T | None``) the string ``"none"`` means
  ``None``, in a TOML file and on the command line. (So an optional ``str`` field cannot hold
  the literal string ``"none"``; saving such a value raises ConfigError.)
* A TOML file holds its keys either at the top level, or all inside one table (for example
  ``[train]``); ``config_from_toml(..., table="train")`` picks a table by name.
* Command-line strings are parsed by ``add_dataclass_arguments``: ``--hidden-size 46``,
  ``--lr 3e-4``, ``--dropout none``, ``--amp/--no-amp``, ``--layers 64 64`` (``--layers``
  alone gives an empty sequence).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from grukit.errors import ConfigError

__all__ = [
    "add_dataclass_arguments",
    "build_config",
    "config_from_dict",
    "config_from_toml",
    "config_to_dict",
    "overrides_from_namespace",
    "read_toml_document",
    "save_config_toml",
    "to_toml",
]

T = TypeVar("T")

_SCALARS: tuple[type, ...] = (bool, int, float, str)
_SCALAR_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}
_NONE_TOKEN = "none"
_MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The type of one configuration field, reduced to what this module supports."""

    scalar: type  # bool, int, float or str (the element type for sequences)
    container: type | None  # tuple, list or None
    optional: bool

    def describe(self) -> str:
        name = _SCALAR_NAMES[self.scalar]
        text = f"{self.container.__name__} of {name}" if self.container else name
        return f"{text} or None" if self.optional else text


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    spec: _Spec
    has_default: bool
    default: Any
    default_factory: Any
    help: str

    def default_value(self) -> Any:
        if self.default is not _MISSING:
            return self.default
        if self.default_factory is not _MISSING:
            return self.default_factory()
        raise AssertionError("field has no default")  # pragma: no cover


def _parse_annotation(tp: Any, where: str) -> _Spec:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _parse_annotation(rest[0], where)
            if not inner.optional:
                return dataclasses.replace(inner, optional=True)
    elif origin in (tuple, list):
        args = typing.get_args(tp)
        homogeneous_tuple = origin is tuple and len(args) == 2 and args[1] is Ellipsis
        if (homogeneous_tuple or (origin is list and len(args) == 1)) and args[0] in _SCALARS:
            return _Spec(args[0], origin, False)
    elif tp in _SCALARS:
        return _Spec(tp, None, False)
    raise TypeError(
        f"{where}: unsupported configuration type {tp!r}; use int, float, str, bool, "
        "tuple[T, ...] or list[T] of those, optionally '| None'"
    )


@functools.cache
def _fields(cls: type) -> dict[str, _Field]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass class, got {cls!r}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # unresolvable string annotations
        raise TypeError(f"cannot resolve the type annotations of {cls.__name__}: {exc}") from exc
    result: dict[str, _Field] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        spec = _parse_annotation(hints[f.name], f"{cls.__name__}.{f.name}")
        has_default = f.default is not _MISSING or f.default_factory is not _MISSING
        result[f.name] = _Field(
            name=f.name,
            spec=spec,
            has_default=has_default,
            default=f.default,
            default_factory=f.default_factory,
            help=str(f.metadata.get("help", "")),
        )
    return result


def _type_error(source: str, key: str, spec: _Spec, value: object) -> ConfigError:
    return ConfigError(
        f"{source}: key '{key}' expects {spec.describe()}, got {value!r} ({type(value).__name__})"
    )


def _check_scalar(scalar: type, value: object) -> tuple[bool, object]:
    """Return (ok, normalised value) for one scalar; bools never pass for numbers."""
    if scalar is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, value
    if scalar is float and isinstance(value, int | float):
        return True, float(value)
    return isinstance(value, scalar), value


def _check_value(source: str, key: str, spec: _Spec, value: object, *, none_token: bool) -> object:
    """Check ``value`` against ``spec`` and return it normalised (ints to float, lists to tuple)."""
    if value is None or (none_token and spec.optional and value == _NONE_TOKEN):
        if spec.optional:
            return None
        raise _type_error(source, key, spec, value)
    if spec.container is not None:
        if not isinstance(value, list | tuple):
            raise _type_error(source, key, spec, value)
        items = []
        for item in value:
            ok, normalised = _check_scalar(spec.scalar, item)
            if not ok:
                raise ConfigError(
                    f"{source}: key '{key}' expects {spec.describe()}, got {value!r} "
                    f"(element {item!r} is {type(item).__name__})"
                )
            items.append(normalised)
        return spec.container(items)
    ok, normalised = _check_scalar(spec.scalar, value)
    if not ok:
        raise _type_error(source, key, spec, value)
    return normalised


def _unknown_keys_error(source: str, unknown: Iterable[str], valid: Iterable[str]) -> ConfigError:
    valid = sorted(valid)
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        if not close and "-" in key:
            close = difflib.get_close_matches(key.replace("-", "_"), valid, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        parts.append(f"'{key}'{hint}")
    noun = "key" if len(parts) == 1 else "keys"
    return ConfigError(
        f"{source}: unknown {noun} {', '.join(parts)}; valid keys: {', '.join(valid)}"
    )


def _check_mapping(
    cls: type, values: Mapping[str, object], source: str, *, none_token: bool
) -> dict[str, object]:
    fields = _fields(cls)
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: keys must be strings, got {key!r}")
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise _unknown_keys_error(source, unknown, fields)
    return {
        key: _check_value(source, key, fields[key].spec, value, none_token=none_token)
        for key, value in values.items()
    }


def _display(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_display(v) for v in value) + "]"
    return repr(value)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _instantiate(cls: type[T], values: Mapping[str, object], source: str) -> T:
    fields = _fields(cls)
    missing = [name for name, f in fields.items() if not f.has_default and name not in values]
    if missing:
        raise ConfigError(f"{source}: missing required key(s): {', '.join(sorted(missing))}")
    try:
        instance = cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a __post_init__ check
        raise ConfigError(f"{source}: invalid configuration: {exc}") from exc
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{source}: invalid configuration: {exc}") from exc
    return instance


def read_toml_document(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file at ``path``; every failure is a one-sentence ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return document


def config_from_toml(cls: type, path: str | Path, *, table: str | None = None) -> dict[str, Any]:
    """Read and type-check the keys of a TOML file for dataclass ``cls``; return them as a dict.

    Keys live at the top level, or all inside a single table (any name) when the file holds
    nothing else; ``table`` selects a table by name instead. Only the keys present in the file
    are returned (defaults are not filled in).
    """
    path = Path(path)
    document = read_toml_document(path)

    source = str(path)
    if table is not None:
        section = document.get(table)
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: no table [{table}]")
        values = section
        source = f"{path} [{table}]"
    else:
        tables = [k for k, v in document.items() if isinstance(v, dict)]
        if tables and len(document) == 1:
            values = document[tables[0]]
            source = f"{path} [{tables[0]}]"
        elif tables:
            found = ", ".join(f"[{t}]" for t in tables)
            raise ConfigError(
                f"{path}: expected the keys at the top level or all in one table, found "
                f"table(s) {found} beside other keys"
            )
        else:
            values = document
    return _check_mapping(cls, values, source, none_token=True)


def config_from_dict(cls: type[T], d: Mapping[str, object], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping of field values (e.g. a saved config), with full checks.

    Missing keys take their defaults; ``validate()`` is called if defined.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: expected a table of keys, got {type(d).__name__}")
    values = _check_mapping(cls, d, source, none_token=False)
    return _instantiate(cls, values, source)


def build_config(
    cls: type[T],
    *,
    toml_path: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
    announce: Callable[[str], object] | None = print,
) -> T:
    """Resolve ``cls``: defaults, then the TOML file, then ``overrides``; then ``validate()``.

    Every value from the file or the overrides that changes the value before it is reported
    through ``announce`` as ``Overriding: key = value`` (``announce=None`` is silent).
    Overrides are type-checked strictly (no string parsing; see ``add_dataclass_arguments``).
    """
    fields = _fields(cls)
    layers: list[dict[str, object]] = []
    if toml_path is not None:
        layers.append(config_from_toml(cls, toml_path))
    if overrides:
        layers.append(_check_mapping(cls, overrides, "overrides", none_token=False))

    current = {name: f.default_value() for name, f in fields.items() if f.has_default}
    for layer in layers:
        for key, value in layer.items():
            changed = key not in current or not _same(current[key], value)
            if changed and announce is not None:
                announce(f"Overriding: {key} = {_display(value)}")
            current[key] = value
    return _instantiate(cls, current, "configuration")


# -- command line ---------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_parser(scalar: type, optional: bool) -> Callable[[str], object]:
    what = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[scalar]
    if optional:
        what += " or 'none'"

    def parse(text: str) -> object:
        if optional and text == _NONE_TOKEN:
            return None
        try:
            if scalar is int:
                return int(text, 10)
            if scalar is float:
                return float(text)
            if scalar is bool:
                lowered = text.lower()
                if lowered in ("true", "yes", "1", "on"):
                    return True
                if lowered in ("false", "no", "0", "off"):
                    return False
                raise ValueError(text)
            return text
        except ValueError:
            # argparse prefixes this with "argument --flag: "
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


class _SequenceAction(argparse.Action):
    """Collects ``--layers 64 64`` into a list; ``--layers none`` for an optional field."""

    def __init__(self, *args: Any, optional: bool = False, **kwargs: Any) -> None:
        self.optional = optional
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        values = list(values)
        if self.optional and None in values:
            if len(values) != 1:
                raise argparse.ArgumentError(self, "'none' must be given alone")
            setattr(namespace, self.dest, None)
            return
        setattr(namespace, self.dest, values)


def _help_text(f: _Field) -> str:
    text = f.help
    if f.has_default:
        shown = f.default_value()
        if isinstance(shown, list | tuple):
            shown = " ".join(str(v) for v in shown) or "(empty)"
        elif shown is None:
            shown = _NONE_TOKEN
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    else:
        text = f"{text} (required)" if text else "required"
    return text.replace("%", "%%")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = ()
) -> None:
    """Add one ``--kebab-case`` flag per field of ``cls`` (except ``exclude``) to ``parser``.

    Flags default to ``argparse.SUPPRESS``, so the namespace holds only the flags given;
    collect them with ``overrides_from_namespace``. Bool fields get ``--flag/--no-flag``;
    optional fields accept ``none``; sequences take zero or more values.
    """
    excluded = set(exclude)
    fields = _fields(cls)
    unknown = excluded - set(fields)
    if unknown:
        raise _unknown_keys_error("exclude", sorted(unknown), fields)
    for name, f in fields.items():
        if name in excluded:
            continue
        flag = _flag(name)
        spec = f.spec
        common: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": _help_text(f),
        }
        if spec.container is not None:
            parser.add_argument(
                flag,
                nargs="*",
                type=_scalar_parser(spec.scalar, spec.optional),
                metavar=_SCALAR_NAMES[spec.scalar].upper(),
                action=_SequenceAction,
                optional=spec.optional,
                **common,
            )
        elif spec.scalar is bool and not spec.optional:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(
                flag,
                type=_scalar_parser(spec.scalar, spec.optional),
                metavar=_SCALAR_NAMES[spec.scalar].upper(),
                **common,
            )


def overrides_from_namespace(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    """Return ``{field: value}`` for the fields of ``cls`` whose flags were given in ``ns``."""
    return {name: getattr(ns, name) for name in _fields(cls) if hasattr(ns, name)}


# -- saving ---------------------------------------------------------------------------------


def config_to_dict(instance: object) -> dict[str, Any]:
    """Return the fields of a configuration instance as plain data (sequences as lists)."""
    if not dataclasses.is_dataclass(instance) or isinstance(instance, type):
        raise TypeError(f"expected a dataclass instance, got {instance!r}")
    result: dict[str, Any] = {}
    for name in _fields(type(instance)):
        value = getattr(instance, name)
        result[name] = list(value) if isinstance(value, list | tuple) else value
    return result


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ConfigError(f"cannot write {text!r} to TOML: it holds a lone surrogate")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # repr round-trips exactly and is valid TOML ('inf', '1e-05', ...)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write a {type(value).__name__} to TOML")


def to_toml(instance: object) -> str:
    """Return the TOML text of a configuration instance (top-level keys, help as comments)."""
    fields = _fields(type(instance))
    lines = [f"# {type(instance).__name__} (written by grukit; load it with --config)", ""]
    for name, value in config_to_dict(instance).items():
        f = fields[name]
        for help_line in f.help.splitlines():
            lines.append(f"# {help_line}".rstrip())
        if value is None:
            text = _toml_string(_NONE_TOKEN)
        else:
            if f.spec.optional and value == _NONE_TOKEN:
                raise ConfigError(
                    f"cannot write key '{name}' = 'none' to TOML: it would read back as None"
                )
            text = _toml_value(value)
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"


def save_config_toml(instance: object, path: str | Path) -> None:
    """Write ``instance`` as TOML to ``path`` atomically; ``build_config(toml_path=path)``
    reads back an equal instance."""
    from grukit.checkpoint import atomic_write_text  # lazy: keeps this module free of torch

    atomic_write_text(path, to_toml(instance))
