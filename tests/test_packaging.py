"""NIPC as a package: what the sdist carries, the dependency floors and the version (the
private Twisted names it relies on: tests/test_compat.py)."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
#: Not part of a source tree: tools' caches and what earlier builds left.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist",
                                     ".mypy_cache", ".pytest_cache", ".hypothesis", "dropin.cache")


def build(kind: str, tmp_path: Path) -> Path:
    """``python -m build <kind>`` (no network: this virtualenv's setuptools) on a copy of
    the checkout; the one file it made."""
    tree = tmp_path / "src"
    shutil.copytree(ROOT, tree, ignore=_NOT_SOURCE)
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", kind, "--no-isolation",
                           "--outdir", str(out), str(tree)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [made] = out.glob("nipc-*")
    return made


def test_sdist_carries_license_config_units_and_docs(tmp_path: Path) -> None:
    """``python -m build --sdist`` (no network: this virtualenv's setuptools) on a copy."""
    sdist = build("--sdist", tmp_path)
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    expected = {"LICENSE", "README.md", "setup.cfg", "pyproject.toml", "nipc/__init__.py",
                "twisted/plugins/nipc_plugin.py", "twisted/plugins/nipc_endpoints.py",
                "etc/nipcd.toml", "etc/nipcd.service", "etc/nipcd.socket",
                "docs/OPERATING.md", "docs/DESIGN.md", "docs/SECURITY.md",
                "scripts/bootstrap", "scripts/debian-packages", "tests/conftest.py",
                "nipc_testbed/sandbox.py", "nipc_testbed/demo.py"}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_carries_the_daemon_and_client_but_not_the_throwaway_domain(
        tmp_path: Path) -> None:
    """The sandbox and demo (fixed passwords, root-only namespace building) lived in ``nipc``
    and shipped in every wheel; they belong to the checkout (``nipc_testbed``), not to what an
    operator installs."""
    from nipc_testbed.sandbox import ADMIN_PASSWORD, PASSWORD

    wheel = build("--wheel", tmp_path)
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        texts = [whl.read(name) for name in names]
    assert {"nipc/__init__.py", "nipc/service.py", "nipc/client.py", "nipc/cli/__init__.py",
            "nipc/cli/__main__.py", "twisted/plugins/nipc_plugin.py"} <= names, sorted(names)
    assert {n.split("/")[0] for n in names if not n.startswith("nipc-")} == {"nipc", "twisted"}
    assert not names & {"nipc/sandbox.py", "nipc/sandbox_ldap.py", "nipc/demo.py",
                        "nipc/prereqs.py"}
    assert not [t for t in texts if PASSWORD.encode() in t or ADMIN_PASSWORD.encode() in t]


def test_license_is_mit_by_the_nipc_authors() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) the NIPC authors" in text
    assert "license = MIT" in (ROOT / "setup.cfg").read_text()


# -- dependencies: every import declared, with a floor that works --------------------------


def _requirements() -> dict[str, Requirement]:
    """setup.cfg's install_requires, by normalized distribution name."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    reqs = [Requirement(line) for line in parser["options"]["install_requires"].splitlines()
            if line.strip()]
    return {canonicalize_name(r.name): r for r in reqs}


def _imported_distributions() -> dict[str, str]:
    """Distribution -> a module of nipc that imports it (third-party imports only)."""
    by_module = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for path in [*(ROOT / "nipc").rglob("*.py"), *(ROOT / "twisted" / "plugins").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                # nipc_testbed: the checkout's own (``nipc demo`` imports it when present).
                if top in sys.stdlib_module_names or top in ("nipc", "nipc_testbed"):
                    continue
                dists = {canonicalize_name(d) for d in by_module.get(top, [])} - {"nipc"}
                if len(dists) > 1:  # a namespace package: zope.interface, zope.event, ...
                    dists &= {canonicalize_name(".".join(module.split(".")[:2]))}
                assert len(dists) == 1, f"{module} (imported by {path.name}): {dists}"
                found.setdefault(dists.pop(), path.name)
    return found


def test_every_imported_distribution_is_declared() -> None:
    """nipc imported cryptography directly without declaring it."""
    declared = _requirements()
    missing = {d: where for d, where in _imported_distributions().items() if d not in declared}
    assert not missing, f"imported but not in install_requires: {missing}"


@pytest.mark.parametrize(("name", "floor", "below"),
                         [("pyopenssl", "25.2", "25.1.0"), ("cryptography", "45.0.7", "45.0.6")])
def test_dependency_floors_that_work(name: str, floor: str, below: str) -> None:
    """nipc/tls.py needs pyOpenSSL 25.2 (TLS 1.3 suites, partial writes off), which needs
    cryptography 45.0.7; the floors are the lowest versions the tests pass with (setup.cfg)."""
    spec = _requirements()[name].specifier
    assert spec.contains(floor) and not spec.contains(below), f"{name}{spec}"
    assert importlib.metadata.version(name) in spec


# -- the version ---------------------------------------------------------------------------


def test_nipc_version_is_the_package_version() -> None:
    """``nipc --version`` (the installed command) says the version the package was built as."""
    import nipc

    nipc_command = Path(sys.prefix) / "bin" / "nipc"
    proc = subprocess.run([str(nipc_command), "--version"], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"nipc {nipc.__version__}"
    assert importlib.metadata.version("nipc") == nipc.__version__


def test_client_library_and_command_need_only_the_standard_library() -> None:
    """``import nipc`` and the ``nipc`` command work on a host's own Python, which need not
    have the daemon's dependencies (users' programs do not run in the daemon's virtualenv)."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import nipc, nipc.cli; "
              "print(sorted({m.split('.')[0] for m in sys.modules}"
              " - set(sys.stdlib_module_names) - {'nipc', '__main__'}))")
    proc = subprocess.run([sys.executable, "-S", "-c", script, str(ROOT)], capture_output=True,
                          text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
