"""What a built wheel installs: the one namespace ``zmqkit``, and every package of the repository.

The repository keeps ``zmqkit/``, ``patterns/`` and ``demos/`` at its top level; setup.cfg maps
the last two to ``zmqkit.patterns`` and ``zmqkit.demos`` and lists each package. A package folder
added under ``patterns/`` or ``demos/`` without a line in that list would be missing from the
wheel while every test run from the working tree still passes: this test builds the wheel and
looks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SKIP = {".git", ".venv", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache",
        ".mypy_cache", ".ruff_cache"}


def source_files() -> list[str]:
    """The files of a fresh clone plus the work not yet committed (what git does not ignore);
    outside a git checkout, every file but build outputs and caches."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True, timeout=30,
        )
    except (OSError, subprocess.CalledProcessError):
        return [str(path.relative_to(ROOT)) for path in ROOT.rglob("*")
                if path.is_file() and not SKIP & set(path.relative_to(ROOT).parts)
                and not any(part.endswith(".egg-info") for part in path.parts)]
    return [name for name in listed.stdout.decode().split("\0")
            if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """A wheel built from a copy of the sources (the repository itself is left untouched)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    for name in source_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    dist = work / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--quiet", "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [path] = dist.glob("zmqkit-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_installs_the_zmqkit_namespace_alone(wheel: zipfile.ZipFile) -> None:
    [top_level] = [n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["zmqkit"]
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"zmqkit"}


@pytest.mark.parametrize("folder", ["patterns", "demos"])
def test_every_package_folder_is_in_the_wheel(wheel: zipfile.ZipFile, folder: str) -> None:
    names = set(wheel.namelist())
    packages = sorted(init.parent for init in (ROOT / folder).rglob("__init__.py")
                      if "__pycache__" not in init.parts)
    assert packages, f"no package under {folder}/"
    missing = []
    for package in packages:
        installed = "/".join(("zmqkit", folder, *package.relative_to(ROOT / folder).parts))
        for module in sorted(package.glob("*.py")):
            if f"{installed}/{module.name}" not in names:
                missing.append(f"{module.relative_to(ROOT)} (as {installed}/{module.name})")
    assert missing == [], "not in the wheel (is setup.cfg's package list stale?):\n" + \
        "\n".join(missing)
    assert f"zmqkit/{folder}/py.typed" in names
    assert "zmqkit/py.typed" in names
