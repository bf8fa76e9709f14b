"""NIPC as a package: what the sdist carries, the dependency floors, the version, and the
private Twisted names it relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Not part of a source tree: tools' caches and what earlier builds left.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist",
                                     ".mypy_cache", ".pytest_cache", ".hypothesis", "dropin.cache")


def test_sdist_carries_license_config_units_and_docs(tmp_path: Path) -> None:
    """``python -m build --sdist`` (no network: this virtualenv's setuptools) on a copy."""
    tree = tmp_path / "src"
    shutil.copytree(ROOT, tree, ignore=_NOT_SOURCE)
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                           "--outdir", str(out), str(tree)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [sdist] = out.glob("nipc-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    expected = {"LICENSE", "README.md", "setup.cfg", "pyproject.toml", "nipc/__init__.py",
                "twisted/plugins/nipc_plugin.py", "twisted/plugins/nipc_endpoints.py",
                "etc/nipcd.toml", "etc/nipcd.service", "etc/nipcd.socket",
                "docs/OPERATING.md", "docs/DESIGN.md", "docs/SECURITY.md",
                "scripts/bootstrap", "scripts/debian-packages", "tests/conftest.py"}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_license_is_mit_by_the_nipc_authors() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) the NIPC authors" in text
    assert "license = MIT" in (ROOT / "setup.cfg").read_text()
