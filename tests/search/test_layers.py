"""search/'s layers point one way: record <- run <- decide <- the top (runner, sweep, the entry
scripts, `python -m search`). Every import counts, a function's included: an import hidden in a
function to dodge a circle is still an upward arrow (shared/docs/layout.md)."""
import ast
from pathlib import Path

SEARCH = Path(__file__).resolve().parents[2] / "search"
RANK = {"record": 0, "run": 1, "decide": 2}
TOP = 3


def layer(module: str) -> int | None:
    """The layer of a module of the search package (None: not one of ours)."""
    parts = module.split(".")
    if parts[0] != "search" or len(parts) == 1:
        return None
    return RANK.get(parts[1], TOP)


def imports(path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every import in a file, at any depth; `from search.x import y`
    counts as search.x.y when y is a module (a stage's package imports nothing by itself)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(f"{node.module}.{a.name}" if node.module in ("search", "search.run", "search.decide",
                                                                   "search.record") else node.module, node.lineno)
                    for a in node.names]
    return out


def upward_arrows(root: Path = SEARCH) -> list[str]:
    arrows = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("search", *path.relative_to(root).with_suffix("").parts))
        own = layer(module) if path.name != "__init__.py" or path.parent != root else TOP
        for name, line in imports(path):
            target = layer(name)
            if target is not None and own is not None and target > own:
                arrows.append(f"{module}:{line} imports {name}")
    return arrows


def test_no_module_imports_a_higher_layer():
    assert upward_arrows() == []


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path):
    (tmp_path / "record").mkdir()
    (tmp_path / "record" / "x.py").write_text("def f():\n    from search.decide import rule\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "y.py").write_text("import search.record.study\nfrom search import runner\n")
    assert upward_arrows(tmp_path) == ["search.record.x:2 imports search.decide.rule",
                                       "search.run.y:2 imports search.runner"]
