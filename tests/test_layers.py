"""The package's layers import only downwards (STYLE.md): data flow order = import order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stetho"

# Lower number = lower layer. Backends are estimators on plain arrays, so models may use them.
# The toy synthesiser (synth) writes WAVs (audio) listed as clips (datasets) and needs nothing
# higher: just above datasets, so the dataset layer cannot import it (the pipeline and CLI do).
# monitor (the verdict database, scoring for the service and watcher) builds on the pipeline's runs
# and is used by the CLI. export (ONNX / TorchScript files of a run's models) builds on the models and
# the run folder, below the pipeline; edge (the torch-free scorer of ONNX exports) imports no stetho.
RANK = {
    "errors": 0, "fileio": 0, "run_folder": 0, "edge": 0, "audio": 1, "datasets": 2, "synth": 2.5, "features": 3,
    "backends": 4, "models": 5, "metrics": 6, "outputs": 7, "export": 7.5, "config": 8, "pipeline": 8, "novelty": 8,
    "monitor": 8.5, "cli": 9,
}


#: ``import stetho`` / ``from stetho import __version__``: the package's own ``__init__.py``.
TOP = "stetho"


def _layer(parts: list[str]) -> str:
    return parts[0].removesuffix(".py")


def _imports(path: Path, package: str = "stetho") -> list[tuple[int, str]]:
    """``(line, layer)`` of every import of the package in ``path``: ``import stetho.x.y [as z]``,
    ``from stetho.x import y``, ``from stetho import x`` (layer ``x`` when it is a submodule, else the
    top-level package), ``import stetho`` and relative imports (``package`` is the dotted package
    that ``path`` lies in, for resolving them)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # from . import x / from ..pipeline import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            parts = module.split(".")
            if parts[0] != "stetho":
                continue
            if len(parts) > 1:
                out.append((node.lineno, parts[1]))
            else:  # a submodule is its layer; any other name comes from stetho/__init__.py
                out += [(node.lineno, a.name if _is_submodule(a.name) else TOP) for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "stetho":
                    out.append((node.lineno, parts[1] if len(parts) > 1 else TOP))
    return out


def _is_submodule(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def _package(path: Path) -> str:
    """Dotted package of a module file under ``PACKAGE``."""
    return ".".join(["stetho", *path.relative_to(PACKAGE).parent.parts])


def _top_rank(init: Path) -> int:
    """Layer of ``import stetho``: as high as the highest layer the package's ``__init__.py``
    imports. While it only defines ``__version__`` anyone may import it; if it re-exported e.g.
    the pipeline, ``import stetho`` from a low layer would be an upward import."""
    return max((RANK[t] for _, t in _imports(init) if t != TOP), default=0)


def _violations(path: Path, layer: str, package: str, rank: dict[str, int]) -> list[str]:
    """Imports in ``path`` (of layer ``layer``, in dotted ``package``) of unknown or higher layers."""
    out = []
    for lineno, target in _imports(path, package):
        if target not in rank:
            out.append(f"{path}:{lineno}: imports unknown layer stetho.{target}")
        elif rank[target] > rank[layer]:
            out.append(f"{path}:{lineno} ({layer}) imports {'stetho.' + target if target != TOP else 'stetho'}, "
                       "a higher layer")
    return out


RANK[TOP] = _top_rank(PACKAGE / "__init__.py")

MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_lower_or_same_layers(path):
    layer = _layer(list(path.relative_to(PACKAGE).parts))
    assert layer in RANK, f"{path}: layer '{layer}' is missing from the layer table"
    assert _violations(path, layer, _package(path), RANK) == []


def test_the_layer_table_catches_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from stetho.cli import main\n")
    assert _imports(bad) == [(1, "cli")] and RANK["cli"] > RANK["features"]


@pytest.mark.parametrize("line, found", [
    ("from stetho.pipeline import train", ["pipeline"]),
    ("from stetho import pipeline", ["pipeline"]),
    ("from stetho import metrics, cli", ["metrics", "cli"]),
    ("import stetho.outputs.report", ["outputs"]),
    ("import stetho.outputs.report as report", ["outputs"]),
    ("import numpy, stetho.cli as cli", ["cli"]),
    ("from ..pipeline import train", ["pipeline"]),
    ("from .. import novelty", ["novelty"]),
    ("def f():\n    from stetho import pipeline", ["pipeline"]),
])
def test_the_checker_flags_every_form_of_an_upward_import(tmp_path, line, found):
    bad = tmp_path / "x.py"
    bad.write_text(line + "\n")
    assert [t for _, t in _imports(bad, "stetho.features")] == found
    assert len(_violations(bad, "features", "stetho.features", RANK)) == len(found)
    assert _violations(bad, "cli", "stetho.features", RANK) == []  # the same imports are fine from the top


def test_import_stetho_is_as_high_as_what_the_package_init_imports(tmp_path):
    user = tmp_path / "x.py"
    for line in ("import stetho", "from stetho import __version__", "import stetho as s"):
        user.write_text(line + "\n")
        assert _imports(user) == [(1, TOP)]
        # today's stetho/__init__.py defines only __version__: fine from the lowest layer
        assert RANK[TOP] == 0 and _violations(user, "errors", "stetho", RANK) == []
    # an __init__ re-exporting the pipeline makes `import stetho` upward from models
    init = tmp_path / "__init__.py"
    init.write_text('"""doc"""\nfrom stetho.pipeline import train\n__version__ = "0"\n')
    rank = {**RANK, TOP: _top_rank(init)}
    assert rank[TOP] == RANK["pipeline"]
    assert len(_violations(user, "models", "stetho.models", rank)) == 1
    assert _violations(user, "cli", "stetho", rank) == []
