"""Helpers shared by the command-line tests."""

from __future__ import annotations


def assert_one_line_error(err: str, command: str, *words: str) -> str:
    """``err`` is one line ``grukit COMMAND: error: ...`` holding every one of ``words``."""
    assert "Traceback" not in err, f"a traceback instead of a one-line error:\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"grukit {command}: error: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} missing from: {lines[0]}"
    return lines[0]
