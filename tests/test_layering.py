"""Layers point one way (docs/architecture.md, "Layers"): a module never imports a module of a HIGHER layer —
module-level and function-level imports alike (every ``import`` / ``from … import`` node of the AST counts).

Layers, lowest first (a module may import its own layer and every lower one):

0. ``synthpair`` (package root), ``errors``, ``io``, ``config``, ``env`` — shared plumbing;
1. ``diffusion``, ``metrics`` — the math: schedules, losses, the sampling loop; pure metric functions;
2. ``data`` — readers, dataset folders, splits, phantoms, paired transforms (clustering uses metric features);
3. ``networks`` — network builders (diffusion U-Nets, conditional / prompt / ControlNet / LoRA wrappers,
   segmenter builders), export files;
4. ``methods`` — generation methods (network + objective + pipeline) and loading an export (``methods.export``);
5. ``training`` — the trainer;
6. ``synthesis`` — generation, inpainting, harmonisation, the synthetic-folder manifest and its replay,
   label accounting, the faithfulness scorer (which only LOADS a reference segmenter folder);
7. ``segmentation``, ``evaluation`` — segmenters trained on real (+ synthetic) pairs; generation metrics;
8. ``report`` — tables, figures, HTML;
9. ``pipeline``, ``experiments``, ``cli``, ``__main__`` — the whole loop, the studies and the commands.

Exceptions are listed in ``ALLOWED`` with their reason; keep them few.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "synthpair"

LAYERS: dict[str, int] = {
    "synthpair": 0, "errors": 0, "io": 0, "config": 0, "env": 0,
    "diffusion": 1, "metrics": 1,
    "data": 2,
    "networks": 3,
    "methods": 4,
    "training": 5,
    "synthesis": 6,
    "segmentation": 7, "evaluation": 7,
    "report": 8,
    "pipeline": 9, "experiments": 9, "cli": 9, "__main__": 9,
}

# Modules whose layer differs from their package's, with the reason.
MODULE_LAYERS: dict[str, tuple[int, str]] = {
    "synthpair.report.grid": (1, "pure drawing: arrays → a PNG grid (the trainer's preview samples use it)"),
    "synthpair.report.tables": (1, "pure formatting: rows → Markdown (segmentation's transfer tables use it)"),
}

# (importer, imported) pairs allowed to point upwards, with the reason. Keep this short.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    for name in sorted(MODULE_LAYERS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return MODULE_LAYERS[name][0]
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    if key not in LAYERS:
        raise AssertionError(f"{module}: no layer assigned; add its package to LAYERS in tests/test_layering.py")
    return LAYERS[key]


def imports(path: Path) -> list[tuple[str, int]]:
    """(absolute imported module, line) of every synthpair import in ``path`` (function bodies included)."""
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    package = module if is_package else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "synthpair":
                continue
            # ``from . import x`` / ``from .pkg import mod``: the imported names may be modules themselves
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (SRC.parent / sub.replace(".", "/")).with_suffix(".py").is_file() or \
                    (SRC.parent / sub.replace(".", "/") / "__init__.py").is_file()
                out.append((sub if is_module else target, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "synthpair"]
    return out


def violations() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        mine = layer_of(module)
        for target, line in imports(path):
            theirs = layer_of(target)
            if theirs > mine and (module, target) not in ALLOWED:
                found.append(f"{path.relative_to(SRC.parent)}:{line}: {module} (layer {mine}) imports {target} "
                             f"(layer {theirs})")
    return found


def test_no_module_imports_a_higher_layer() -> None:
    found = violations()
    assert not found, "upward imports:\n" + "\n".join(found)


def test_every_package_has_a_layer_and_exceptions_are_current() -> None:
    for path in SRC.rglob("*.py"):
        layer_of(module_name(path))  # raises for a package without a layer
    for importer, imported in ALLOWED:
        assert (SRC.parent / importer.replace(".", "/")).with_suffix(".py").is_file(), importer
        assert any(t == imported for t, _ in imports((SRC.parent / importer.replace(".", "/")).with_suffix(".py"))), \
            f"ALLOWED lists {importer} → {imported}, which no longer exists: remove it"
    for name in MODULE_LAYERS:
        assert (SRC.parent / name.replace(".", "/")).with_suffix(".py").is_file(), name


def test_the_checker_sees_function_level_and_relative_imports() -> None:
    """The parser itself: relative imports inside a function body are found, resolved and judged."""
    src = "import os\n\ndef f():\n    from ..methods import get_method\n    from . import edges\n    import synthpair.cli\n"
    got = [t for t, _ in imports_in(src, "synthpair.data.probe")]
    assert got == ["synthpair.methods", "synthpair.data.edges", "synthpair.cli"]
    assert [layer_of(t) > layer_of("synthpair.data.probe") for t in got] == [True, False, True]
