"""The layering, checked in the suite: the import-linter contracts of pyproject.toml hold.

The contracts say that the core never imports the patterns or the demos, that patterns use only
the documented surface (``zmqkit`` and ``zmqkit.codec``), that the codec and the peer table
import neither ``zmq`` nor ``socket``, and that the demos and the command sit on top. import-linter
reads packages from disk, so it runs inside the link tree that ``.ci/tree`` lays out (the
installed namespace: ``zmqkit/patterns`` and ``zmqkit/demos`` under ``zmqkit/``), as ``make lint``
does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_the_import_linter_contracts_hold(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    laid = subprocess.run([str(ROOT / ".ci" / "tree"), str(tree)], capture_output=True,
                          text=True, timeout=60)
    assert laid.returncode == 0, laid.stdout + laid.stderr
    assert (tree / "zmqkit" / "patterns" / "__init__.py").exists()
    assert (tree / "zmqkit" / "demos" / "__init__.py").exists()
    linted = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=tree, capture_output=True, text=True, timeout=120,
    )
    report = linted.stdout + linted.stderr
    assert linted.returncode == 0, f"lint-imports failed:\n{report}"


IMPORT_ZMQ = re.compile(r"^\s*(import\s+zmq\b|from\s+zmq\b)", re.MULTILINE)


def test_no_pattern_reaches_the_raw_socket_or_imports_zmq() -> None:
    """A plain source check beside the contracts, which see imports only: ``.raw`` (the pyzmq
    socket under a ``Socket``) appears nowhere in a pattern, not even in a comment."""
    sources = sorted((ROOT / "patterns").rglob("*.py"))
    assert sources, "no pattern sources found"
    offenders = []
    for path in sources:
        text = path.read_text()
        for number, line in enumerate(text.splitlines(), 1):
            if ".raw" in line or IMPORT_ZMQ.match(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "patterns reach pyzmq:\n" + "\n".join(offenders)
