"""The package's layering, read from the source: imports run one way, at the top of each module, no cycles,
no module past 500 lines, no reaching into another module's private names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "receiptlib"

# Data flows down this list; a module may import from its own layer or the layers above it.
LAYERS = [
    {"common", "io", "presets"},
    {"photos"},
    {"synth"},
    {"data"},
    {"models", "serving"},
    {"runs"},
    {"train"},
    {"tta", "openset", "residual", "ablation"},
    {"stn", "predict", "fast", "timing", "bench"},
    {"report", "tuner"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ENTRY_POINTS = {"cli.py", "__init__.py", "__main__.py"}  # may import lazily (a fast --help, a cheap import)


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def dotted(path: Path) -> list[str]:
    return list(path.relative_to(PACKAGE).with_suffix("").parts)


def imported_modules(path: Path, node: ast.ImportFrom) -> list[list[str]]:
    """The receiptlib modules a `from ... import ...` names, as dotted parts below the package."""
    if node.level == 0:
        if not (node.module or "").startswith("receiptlib"):
            return []
        base = node.module.split(".")[1:]
    else:
        here = dotted(path)[:-1]  # the package the module sits in
        base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    if not base:  # `from . import x, y`: each name is a module
        return [[alias.name] for alias in node.names]
    return [base]


def top_name(parts: list[str]) -> str:
    return parts[0] if parts else ""


def edges():
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for target in imported_modules(path, node):
                    yield path, node, target
            elif isinstance(node, ast.Import):  # import receiptlib.x (as y)
                for alias in node.names:
                    if alias.name.startswith("receiptlib."):
                        yield path, node, alias.name.split(".")[1:]


def is_module(parts: list[str]) -> bool:
    base = PACKAGE.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_every_module_has_a_layer():
    unknown = sorted({top_name(dotted(p)) for p in modules()} - set(RANK) - {"__init__"})
    assert not unknown, f"modules without a layer in tests/test_architecture.py: {unknown}"


def test_imports_run_one_way():
    wrong = []
    for path, node, target in edges():
        src, dst = top_name(dotted(path)), top_name(target)
        if src == "__init__" or path.name == "__main__.py" or dst not in RANK or src == dst:
            continue  # entry points (python -m ...) sit outside the layers
        if RANK[dst] > RANK[src]:
            wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {'.'.join(target)}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_package_imports_sit_at_the_top_of_each_module():
    inside = []
    for path in modules():
        if path.name in ENTRY_POINTS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("receiptlib")):
                    inside.append(f"{path.relative_to(PACKAGE)}:{node.lineno} ({fn.name})")
    assert not inside, "package imports inside functions:\n" + "\n".join(inside)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for path, _, target in edges():
        src, dst = top_name(dotted(path)), top_name(target)
        if src not in ("__init__", dst) and path.name != "__main__.py":  # entry points are imported by no one
            graph.setdefault(src, set()).add(dst)
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            assert nxt not in stack, "import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt])
            if nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    for node in sorted(graph):
        visit(node, [node])


def test_no_private_names_across_modules():
    wrong = []
    for path, node, target in edges():
        if top_name(target) == top_name(dotted(path)) and len(dotted(path)) > 1:
            continue  # inside one package its modules share internals
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {alias.name}")
    assert not wrong, "private names imported from other modules:\n" + "\n".join(wrong)


def test_no_private_attributes_of_other_modules():
    """`rtrain._subset` is as private as `from .train import _subset`."""
    wrong = []
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for target in imported_modules(path, node):
                    for alias in node.names:
                        parts = target if target and target[-1] == alias.name else target + [alias.name]
                        if is_module(parts) and top_name(parts) != top_name(dotted(path)):
                            aliases[alias.asname or alias.name] = ".".join(parts)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "private attributes of other modules:\n" + "\n".join(wrong)


def test_the_test_sees_what_it_checks(tmp_path):
    """The walkers above resolve relative imports and module aliases (else every check would pass vacuously)."""
    fit = PACKAGE / "train" / "fit.py"
    targets = [".".join(t) for p, _, t in edges() if p == fit]
    assert "runs" in targets and "train.loop" in targets and "models" in targets
    assert is_module(["train", "loop"]) and is_module(["runs"]) and not is_module(["runs", "Run"])


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
