"""The package layout is the data flow: the import graph has the shape the readme draws, and every package
names what it offers."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dataset", "runtime", "bbox_sub", "metric_sub", "pipeline", "service")
ALLOWED = {  # package -> the project packages it may import
    "dataset": set(), "runtime": {"dataset"}, "bbox_sub": {"dataset", "runtime"},
    "metric_sub": {"dataset", "runtime"}, "pipeline": {"dataset", "runtime", "bbox_sub", "metric_sub"},
    "service": {"dataset", "runtime", "bbox_sub", "metric_sub", "pipeline"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, everywhere: bool) -> set[str]:
    """Project modules a file imports: at module level (what runs on import), or ``everywhere``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if everywhere else _module_level(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _module_level(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            yield from _module_level(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", []))


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    for path in _files(package):
        for name in _imports(path, everywhere=True):
            top = name.split(".")[0]
            assert top == package or top in ALLOWED[package], f"{path.relative_to(REPO)} imports {name}"


def test_the_stages_are_siblings_and_the_data_layer_imports_no_torch() -> None:
    for package, other in (("bbox_sub", "metric_sub"), ("metric_sub", "bbox_sub")):
        for path in _files(package):
            assert not any(n.split(".")[0] == other for n in _imports(path, everywhere=True)), path
    done = subprocess.run([sys.executable, "-c", "import sys, dataset, dataset.layout, dataset.frames, dataset.score, "
                           "dataset.synth; sys.exit('torch' in sys.modules)"], cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_no_module_level_import_cycle() -> None:
    """``from package import submodule`` counts as importing the submodule, and a module's own parent packages
    are not edges: Python imports them first whatever the module says."""
    modules = {_module_name(p): p for package in PACKAGES for p in _files(package)}

    def targets(name: str, path: Path) -> set[str]:
        found = {m for m in _imports(path, everywhere=False) if m in modules}
        found = {m for m in found if not any(o.startswith(m + ".") for o in found if o in modules)} | \
            {m for m in found if m.count(".") and m.rsplit(".", 1)[0] not in found}
        return {m for m in found if m != name and not name.startswith(m + ".")}

    graph = {name: targets(name, path) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [name, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_names_what_it_offers(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, package
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
