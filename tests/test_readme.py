"""The README's Python example runs as written (so it cannot go stale)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README.md has no ```python example"
    outputs = []
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
        outputs.append(capsys.readouterr().out.strip())
    assert outputs[0] in ("fused", "reference"), outputs[0]
