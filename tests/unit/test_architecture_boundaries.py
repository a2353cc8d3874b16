"""The package boundaries of STYLE.md, checked: pure modules stay pure, etcd stays in the
registry."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PURE = ("fleetd.registry.schema", "fleetd.registry.model", "fleetd.registry.changes",
        "fleetd.engine.scheduler", "fleetd.agent.tasks", "fleetd.unit")
IO_PACKAGES = ("grpc", "aetcd", "aiohttp", "dbus_fast")


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io_library(module: str) -> None:
    # A fresh interpreter: this one has grpc loaded by other tests already.
    code = (f"import sys, {module}\n"
            f"print(' '.join(m for m in {IO_PACKAGES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} loads {out}"


def test_the_registry_package_still_offers_its_client_names() -> None:
    import fleetd.registry as registry

    assert registry.Registry.__module__ == "fleetd.registry.registry"
    assert registry.EtcdError.__module__ == "fleetd.registry._etcd"
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        registry.Nothing  # noqa: B018


def _sources() -> list[pathlib.Path]:
    return sorted(p for pkg in ("fleetd", "fleetctl") for p in (ROOT / pkg).rglob("*.py")
                  if "/pb/" not in p.as_posix())


def _registry_only_offences(path: pathlib.Path) -> list[str]:
    """Imports of fleetd.registry._etcd, and uses of a registry's `.etcd` attribute."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "fleetd.registry._etcd":
            out.append(f"{path.name}:{node.lineno}: imports fleetd.registry._etcd")
        elif isinstance(node, ast.Import):
            out += [f"{path.name}:{node.lineno}: imports {a.name}" for a in node.names
                    if a.name == "fleetd.registry._etcd"]
        elif isinstance(node, ast.ImportFrom) and node.module == "fleetd.registry":
            out += [f"{path.name}:{node.lineno}: imports fleetd.registry._etcd" for a in
                    node.names if a.name == "_etcd"]
        elif isinstance(node, ast.Attribute) and node.attr == "etcd":
            owner = node.value
            name = (owner.id if isinstance(owner, ast.Name)
                    else owner.attr if isinstance(owner, ast.Attribute) else "")
            if "registry" in name or name in ("reg", "r"):
                out.append(f"{path.name}:{node.lineno}: reaches {name}.etcd")
    return out


def test_only_the_registry_touches_etcd() -> None:
    offences = [o for p in _sources() if "fleetd/registry/" not in p.as_posix()
                for o in _registry_only_offences(p)]
    assert offences == []


def test_the_boundary_check_finds_what_it_forbids(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from fleetd.registry._etcd import Op\nimport fleetd.registry._etcd\n"
                   "from fleetd.registry import _etcd\n"
                   "async def f(self):\n    await self.registry.etcd.get('k')\n")
    assert len(_registry_only_offences(bad)) == 4
