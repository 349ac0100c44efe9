"""The one-way dependency rule (docs/architecture.md), read off the package's imports:

    frontend -> ir -> analysis / transform -> schedule -> backends -> codegen, cli

A module may import its own layer or a lower one, never a higher one, and no import
cycle exists among the package's modules. Imports inside functions count too: a lazy
import is still a dependency (it is how the old fused.py <-> loops.py cycle hid).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "einsumattn"

# The layer of each top-level part of the package (a folder or a module), lowest first.
LAYERS = {
    "defaults": 0, "diagnostics": 0, "resources": 0, "progress": 0,
    "frontend": 1,
    "ir": 2, "loader": 2,
    "analysis": 3, "transform": 3, "evaluate": 3,
    "schedule": 4,
    "backends": 5,
    "codegen": 6, "verify": 6, "distributed": 6, "huggingface": 6, "bench": 6, "cli": 6,
    "__main__": 6,
    "__init__": 6,
}
# The version is assigned at the top of einsumattn/__init__.py before anything is
# imported, so any layer may read it (the cache key and the generated module's header).
ANY_LAYER = {("einsumattn", "__version__")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def imports(path: Path, text: str | None = None) -> set[str]:
    """The package modules `path` (or `text` in its place) imports: absolute or
    relative, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    text = path.read_text("utf-8") if text is None else text
    found = set()
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "einsumattn"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "einsumattn":
                continue
            for alias in node.names:
                if (target, alias.name) in ANY_LAYER:
                    continue
                submodule = f"{target}.{alias.name}"
                found.add(submodule if _is_module(submodule) else target)
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> nx.DiGraph:
    result = nx.DiGraph()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        result.add_node(name)
        for target in imports(path):
            result.add_edge(name, target)
    return result


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts <= set(LAYERS), f"give {sorted(parts - set(LAYERS))} a layer in LAYERS"


def test_no_lower_layer_imports_a_higher_one():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, b in graph().edges if layer(b) > layer(a)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    cycles = [" -> ".join(c + [c[0]]) for c in nx.simple_cycles(graph())]
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source, bad", [
    ("from ..backends.module import Plan\n", "einsumattn.backends.module"),
    ("def late():\n    import einsumattn.cli\n", "einsumattn.cli"),
    ("from .. import schedule\n", "einsumattn.schedule"),
])
def test_the_rule_sees_every_form_of_import(source, bad):
    """The checker itself: an analysis module importing a higher layer is caught."""
    path = PACKAGE / "analysis" / "passes.py"
    found = imports(path, path.read_text("utf-8") + source)
    assert bad in found and bad not in imports(path)
    assert layer(bad) > layer(module_name(path))


def test_one_backend_reads_another_only_through_the_schedule():
    """The torch backends read the decisions (roles, passes, bounds) from schedule/, not
    from a Triton emitter: backends share data, not each other's printers."""
    edges = [(a, b) for a, b in graph().edges
             if a.startswith("einsumattn.backends.torch_") and
             b.startswith("einsumattn.backends.triton_")]
    assert not edges, edges


def test_the_triton_backends_print_and_decide_nothing():
    """Lowering is a schedule's business (schedule/lowering.py, lower_attention.py): no
    Triton backend subclasses a schedule's decisions (its roles) or a Lowering, so what
    is loaded, masked and accumulated is decided once, in schedule/, for every target.
    The attention lowering once lived in backends/triton_fused.py (`_Tiles`)."""
    schedule_classes = set()
    for path in (PACKAGE / "schedule").glob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        schedule_classes |= {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"AttentionRoles", "LoopRoles", "Lowering"} <= schedule_classes
    wrong = []
    for path in sorted((PACKAGE / "backends").glob("triton_*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", None)) for b in node.bases}
                wrong += [f"{path.name}: {node.name}({base})"
                          for base in sorted(bases & schedule_classes)]
    assert not wrong, wrong
