"""The package's layers import only downwards (STYLE.md): data flow order = import order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stetho"

# Lower number = lower layer. Backends are estimators on plain arrays, so models may use them.
RANK = {
    "errors": 0, "fileio": 0, "audio": 1, "datasets": 2, "features": 3, "backends": 4,
    "models": 5, "metrics": 6, "outputs": 7, "config": 8, "pipeline": 8, "novelty": 8, "cli": 9,
}


def _layer(parts: list[str]) -> str:
    return parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stetho."):
            out.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("stetho.")]
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_lower_or_same_layers(path):
    layer = _layer(list(path.relative_to(PACKAGE).parts))
    assert layer in RANK, f"{path}: layer '{layer}' is missing from the layer table"
    for lineno, target in _imports(path):
        assert target in RANK, f"{path}:{lineno}: imports unknown layer stetho.{target}"
        assert RANK[target] <= RANK[layer], (
            f"{path.relative_to(PACKAGE)}:{lineno} ({layer}) imports stetho.{target}, a higher layer"
        )


def test_the_layer_table_catches_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from stetho.cli import main\n")
    assert _imports(bad) == [(1, "cli")] and RANK["cli"] > RANK["features"]
