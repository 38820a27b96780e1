"""No import circle inside trainer/: the graph of trainer.* imports, function-level ones included
(a lazy import inside a function hides a circle from Python, not from a reader), has no cycle.

Read from the source with ast, so nothing is imported and the test sees every import statement.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "trainer"
ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The trainer modules one import statement names (`from trainer.data import audit` names the
    module trainer.data.audit; `from trainer.data.cache import X` names trainer.data.cache)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:   # relative: resolve against the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules] or [base]
    out = set()
    for name in names:
        while name and name not in modules:   # `import trainer.data.x` reaches the module
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):          # every level: module, function and class bodies
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= imported(node, module, is_package, set(files))
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v); on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop(); on_stack.discard(w); component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_trainer_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import circles in trainer/: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_sees_lazy_and_package_imports(tmp_path):
    """The checker itself: circles closed by a function-level import, by `from pkg import mod`, by
    a relative import or by a module importing a name from its own package are all found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import b\n")
    (pkg / "a.py").write_text("from pkg.sub.b import X\n")
    (pkg / "sub" / "b.py").write_text("X = 1\ndef f():\n    from pkg import a\n")
    (pkg / "sub" / "c.py").write_text("from .. import a\nfrom pkg.sub import X\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.sub"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    (pkg / "sub" / "b.py").write_text("from pkg.sub import c\n")   # pkg.sub -> b -> c -> pkg.sub
    (pkg / "sub" / "c.py").write_text("from pkg.sub import X\n")
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.sub", "pkg.sub.b", "pkg.sub.c"]]
