"""The layering DESIGN.md promises: numerics imports neither verify nor proofs; verify's libraries
(everything outside verify/cli/) import nothing from proofs. Read from the source with ast, so a
lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_packages(path: Path) -> set[str]:
    """Top-level package names that the module at `path` imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str, forbidden: set[str], *, skip: str | None = None) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if skip is not None and relative.startswith(skip):
            continue
        found += [f"{relative} imports {name}" for name in sorted(imported_packages(path) & forbidden)]
    return found


def test_numerics_imports_neither_verify_nor_proofs():
    assert violations("numerics", {"verify", "proofs"}) == []


def test_verify_libraries_import_nothing_from_proofs():
    assert violations("verify", {"proofs"}, skip="verify/cli/") == []


def test_the_rule_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from proofs.claims import Claim\n    import verify.cli\n")
    assert imported_packages(module) >= {"proofs", "verify"}


@pytest.mark.parametrize("package", ["numerics", "verify", "proofs"])
def test_every_package_is_scanned(package):
    assert list((ROOT / package).rglob("*.py")), f"no Python files under {package}/"
