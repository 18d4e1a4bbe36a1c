"""The package's import graph has no cycle: not at module level, and not through the imports inside functions
either (which used to hold two cycles together: config -> optimizers/base -> rollout -> data -> config, and
embedded <-> model_loading)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "apo_online"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (functions included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first: those are edges too
        targets |= {t.rsplit(".", k)[0] for t in list(targets) for k in range(1, t.count(".") + 1)}
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(node):
        colour[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        colour[node] = "black"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in colour and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_apo_online_has_no_import_cycle():
    graph = import_graph()
    assert "apo_online.optimizers.registry" in graph["apo_online.config"]  # the walk sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


SCRIPT_FOLDERS = ("eval", "bench")


def script_imports(path: Path) -> set[str]:
    """Every module a script names in an import statement anywhere in its source (functions included), a relative
    import with its leading dots, and the string literal given to importlib.import_module or __import__."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) in
                   ("import_module", "__import__"))):
            found.add(node.args[0].value)
    return found


def script_to_script_imports(root: Path) -> list[str]:
    """'script: module' for each import under root/eval/ or root/bench/ of another script there: eval.* or bench.*,
    a relative import, or a script's bare name (bench/gpu_bench.py used to put bench/ on sys.path and import
    run_bench). Shared logic lives in the package instead, where it is tested and importable from an installed copy."""
    # hidden folders are the scripts' own environments and caches (bench/.venv-trl, bench/.assets), not scripts
    scripts = [p for folder in SCRIPT_FOLDERS for p in sorted((root / folder).rglob("*.py"))
               if not any(part.startswith(".") for part in p.relative_to(root / folder).parts)]
    bare = {p.stem for p in scripts if p.stem != "__init__"}
    offences = []
    for path in scripts:
        for module in sorted(script_imports(path)):
            top = module.split(".")[0]
            if module.startswith(".") or top in SCRIPT_FOLDERS or top in bare:
                offences.append(f"{path.relative_to(root)}: {module}")
    return offences


def test_script_import_check_finds_each_kind(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "eval" / "a.py").write_text("import json\nfrom apo_online.evaluation import plots\n"
                                            "def f():\n    from eval.b import g\n")
    (tmp_path / "eval" / "b.py").write_text("from . import a\nimport importlib\nimportlib.import_module('bench.c')\n")
    (tmp_path / "bench" / "c.py").write_text("import a\nfrom c import x\n")
    assert script_to_script_imports(tmp_path) == [
        "eval/a.py: eval.b", "eval/b.py: .", "eval/b.py: bench.c", "bench/c.py: a", "bench/c.py: c"]


def test_eval_and_bench_scripts_import_only_the_package():
    """No script under eval/ or bench/ imports another one (launching a worker as a subprocess is not importing)."""
    offences = script_to_script_imports(PACKAGE.parent)
    assert not offences, "\n".join(offences)
