"""The core's import graph (read from the source, nothing imported): no cycle between its modules or between its
parts, no arrow from the core up into an integration or a plugin, and plugins/integrations reach the core only
through its public names and its parts' ``__all__``.

Every import counts, those inside functions too: a lazy import that closes a cycle is still a cycle in the design.
Importing ``longctx_llm.a.b`` also runs the package ``longctx_llm.a`` (its ``__init__``), so that is an arrow too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = "longctx_llm"
#: packages above the core (integrations and plugins): the core never imports them
UPWARD = ("langchain", "langchain_core", "langchain_longctx", "llama_index", "longctx_serve", "longctx_ccm",
          "longctx_rcc", "longctx_dca", "longctx_streaming")


def core_modules() -> dict[str, Path]:
    """Dotted name -> file for every module of the core (a package is its ``__init__``)."""
    out = {}
    for path in sorted((ROOT / CORE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = core_modules()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return skip


def imports_of(name: str, path: Path) -> list[tuple[str, int]]:
    """(dotted module imported, line) for every import statement of a module, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    package = name if name in PACKAGES else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:  # `from pkg import mod` imports the module pkg.mod
                sub = f"{module}.{a.name}"
                found.append((sub if sub in MODULES else module, node.lineno))
    return found


def core_graph() -> dict[str, set[str]]:
    """Arrows between core modules, each package's ``__init__`` run on the way included."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _ in imports_of(name, path):
            if target.split(".")[0] != CORE:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the packages on the way, not the root (every import runs it first)
                step = ".".join(parts[:i])
                if step in MODULES and step != name and not name.startswith(step + "."):
                    graph[name].add(step)
            if target == CORE and name != CORE:
                graph[name].add(CORE)  # a name from the package itself (the public facade)
    return graph


def part_of(name: str) -> str:
    """The part a module belongs to: its subpackage, or itself for a top-level module."""
    return ".".join(name.split(".")[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as [a, b, ..., a], or [] if it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_cycle_between_core_modules():
    graph = core_graph()
    assert len(graph) > 30 and graph[f"{CORE}.cli"]
    assert CORE not in {t for name, ts in graph.items() for t in ts}, (
        "core modules import names from the public facade (longctx_llm/__init__.py), which imports them: "
        + ", ".join(name for name, ts in graph.items() if CORE in ts))
    cycle = find_cycle({name: ts for name, ts in graph.items() if name != CORE})
    assert not cycle, "import cycle between core modules: " + " -> ".join(cycle)


def test_no_cycle_between_core_parts():
    parts: dict[str, set[str]] = {}
    for name, targets in core_graph().items():
        if name == CORE:
            continue  # the facade sits above every part
        parts.setdefault(part_of(name), set()).update(part_of(t) for t in targets if part_of(t) != part_of(name))
    assert {f"{CORE}.{p}" for p in ("runtime", "model", "kernels", "chat", "eval", "train")} <= set(parts)
    cycle = find_cycle(parts)
    assert not cycle, "import cycle between the core's parts: " + " -> ".join(cycle)


#: what each part may import (the parts' docstrings and docs/ARCHITECTURE.md say the same); errors.py: every part
ALLOWED = {
    "cli": {"pipeline", "runtime", "eval", "model", "config", "registry"},
    "pipeline": {"runtime", "config"},
    "chat": {"runtime", "config"},
    "eval": {"runtime", "config"},
    "train": {"eval", "model"},
    "builtins": {"runtime"},
    "runtime": {"config", "registry", "model", "kernels"},
    "config": {"registry", "model"},
    "model": {"kernels"},
    "kernels": set(),
    "registry": set(),
    "errors": set(),
    "_version": set(),
}


def test_parts_import_only_the_parts_below_them():
    found: dict[str, set[str]] = {}
    for name, targets in core_graph().items():
        if name != CORE:
            found.setdefault(part_of(name), set()).update(part_of(t) for t in targets)
    short = {p.split(".")[1]: {t.split(".")[1] for t in ts if t != p} - {"errors"} for p, ts in found.items()}
    assert set(short) == set(ALLOWED), "a new part: say in ALLOWED (and its docstring) what it may import"
    extra = {p: sorted(ts - ALLOWED[p]) for p, ts in short.items() if ts - ALLOWED[p]}
    assert not extra, f"parts importing what they may not: {extra}"


def test_the_core_never_imports_an_integration_or_a_plugin():
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target}"
              for name, path in MODULES.items() for target, line in imports_of(name, path)
              if target.split(".")[0] in UPWARD]
    assert not upward, "the core imports packages above it:\n" + "\n".join(upward)


def test_every_part_says_what_it_holds_and_exports_what_it_lists():
    for name in sorted(PACKAGES - {CORE}):
        module = importlib.import_module(name)
        assert (module.__doc__ or "").strip(), f"{name}/__init__.py has no docstring"
        assert "import" in module.__doc__, f"{name}'s docstring does not say what it may import"
        exported = getattr(module, "__all__", None)
        assert exported, f"{name} has no __all__"
        missing = [n for n in exported if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ lists names it lacks: {missing}"


def _outside_sources() -> list[Path]:
    """The source files of the plugins and integrations (not their tests)."""
    found = []
    for folder in sorted([*ROOT.glob("plugins/*/src"), *ROOT.glob("integrations/*")]):
        found += [p for p in folder.rglob("*.py") if "tests" not in p.relative_to(folder).parts]
    return found


def test_plugins_and_integrations_import_only_public_names():
    """``longctx_llm`` names, top-level modules (config, pipeline, registry, errors, cli) and the parts'
    ``__all__``; never a module inside a part."""
    core = importlib.import_module(CORE)
    public = set(core.__all__) | {n.split(".")[1] for n in MODULES if n.count(".") == 1}
    bad = []
    sources = _outside_sources()
    assert len(sources) > 20
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                targets = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in targets:
                parts = module.split(".")
                if parts[0] != CORE:
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if len(parts) == 1:
                    if name is not None and name not in public:
                        bad.append(f"{where}: {name} is not a public name of {CORE}")
                elif f"{CORE}.{parts[1]}" in PACKAGES:
                    if len(parts) > 2:
                        bad.append(f"{where}: {module} is inside the part {CORE}.{parts[1]}; import from the part")
                    elif name is not None and name not in importlib.import_module(module).__all__:
                        bad.append(f"{where}: {name} is not in {module}.__all__")
    assert not bad, "\n".join(bad)


def test_classes_read_in_one_sitting():
    """Issue 25: ``Engine`` and ``KVCacheState`` split by concern, each class of the core about 200 lines or fewer
    (the scheduler of continuous batching, one loop with its admission and retirement, is the longest)."""
    long = {}
    for name, path in core_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 240:
                long[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, long
    for module, cls in (("longctx_llm.runtime.engine", "Engine"), ("longctx_llm.runtime.kv_state", "KVCacheState")):
        tree = ast.parse(core_modules()[module].read_text())
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
        assert node.end_lineno - node.lineno + 1 <= 200, cls
