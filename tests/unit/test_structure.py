"""The code's shape, checked from source with `ast` (nothing is imported, so this runs in a second):

- no import cycle among the project's modules, counting imports inside function bodies: a cycle hidden in a
  function works until someone moves the import to the top, and it means two modules know each other;
- no module in the production folders over ~600 lines (split it on its seams instead);
- no size constant (an integer literal >= 1000) spelled out bare in more than two modules, and no named one
  defined in two: it belongs in one place, imported where it is used (see `size_constants` for what counts);
- no module-level side effects in `rqvae` or `include` (importing them changes nothing in the process);
- no mode value spelled outside `rqvae/modes.py` where it acts as a mode (compared, defaulted, listed);
- no literal default in a stage's signature (`include/stages/`): the config objects carry every default;
- the folders say what they hold: `rqvae/` keeps at most 10 top-level modules, `include/stages/` one module
  per task id of the DAG files.

Imports under `if TYPE_CHECKING:` are left out: they are never run. The last test checks the one file name
the published layout repeats from the library (to read a model's config without importing torch).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("rqvae", "include")  # imported by dotted name from the repository root
TOP_LEVEL = ("dags", "plugins")  # Airflow puts these folders on sys.path: their files are top-level modules
MAX_LINES = 500
MAX_TOP_MODULES = 10  # rqvae/'s public face: the rest lives in subpackages named for what they hold
SIZE_MIN = 1000  # integer literals from here on count as size constants
MAX_MODULES_PER_SIZE = 2


def production_files() -> dict[str, Path]:
    """Module name -> file, for every module under the production folders."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for folder in TOP_LEVEL:
        for path in sorted((REPO / folder).glob("*.py")):
            modules[path.stem] = path
    return modules


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (imports for annotations only)."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _package_of(name: str, path: Path) -> str:
    """The package a module's relative imports start from."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (the longest known prefix), or None for third-party."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, at top level or inside any function."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _runtime_nodes(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = _package_of(name, path).split(".")
                    anchor = ".".join(package[: len(package) - node.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                # `from pkg import mod` imports the module pkg.mod; `from mod import func` the module mod
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = _resolve(target, modules)
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        state[start] = 1
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _is_size(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value >= SIZE_MIN


def size_literals(tree: ast.Module) -> tuple[set[int], set[tuple[str, int]]]:
    """(values one module spells out bare, (name, value) of the module-level constants it names them by).

    A literal inside the value of a module-level assignment to one UPPER_CASE name belongs to that constant
    (``SPLIT_EPS = 1.0 / 1024``); any other (a default argument, a call's argument, an expression) is bare.
    """
    named: set[tuple[str, int]] = set()
    owned: set[int] = set()  # id() of the literals that belong to a named constant
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else (
            stmt.target if isinstance(stmt, ast.AnnAssign) else None)
        if not isinstance(target, ast.Name) or not target.id.lstrip("_").isupper() or stmt.value is None:
            continue
        for node in ast.walk(stmt.value):
            if _is_size(node):
                named.add((target.id, node.value))
                owned.add(id(node))
    bare = {node.value for node in ast.walk(tree) if _is_size(node) and id(node) not in owned}
    return bare, named


def size_constants(modules: dict[str, Path]) -> tuple[dict[int, set[str]], dict[tuple[str, int], set[str]]]:
    """(bare value -> the modules that spell it out, (constant name, value) -> the modules that define it).

    Why named and bare constants are counted apart: the rule is after one place per meaning, and a number
    alone does not say its meaning. 1024 is a default batch size (rqvae.config), a codebook size up to which
    the exact assignment runs (rqvae.ids.align), a search block (rqvae.quantize.quantizer) and a path-length cap (the
    plugin); 65536 an encode batch, a distance block, a fingerprint sample and a form maximum. Those are
    different knobs that happen to share a round number: importing one from another would tie them, so each
    module names its own (the name and its comment say what it means). So a named constant counts under its
    name: the same name with the same value in two modules is a copy. A bare literal counts under its value
    as before: more than two modules spelling out one number without a name are copies, or unexplained.
    Two names for one meaning are left to review: source alone cannot tell them apart.
    """
    bare: dict[int, set[str]] = defaultdict(set)
    named: dict[tuple[str, int], set[str]] = defaultdict(set)
    for name, path in modules.items():
        values, constants = size_literals(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for value in values:
            bare[value].add(name)
        for constant in constants:
            named[constant].add(name)
    return bare, named


def test_the_graph_sees_imports_inside_functions() -> None:
    """The checker itself: a cycle closed only by a function-level import is found."""
    modules = production_files()
    graph = import_graph(modules)
    assert "include.layout" in graph["include.stages.publish"], "top-level `from include.layout import ...`"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from include import publish\n")
    assert any(isinstance(n, ast.ImportFrom) for n in _runtime_nodes(tree))
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import include.stages.publish\n")
    assert not any(isinstance(n, ast.Import) for n in _runtime_nodes(typed))


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(production_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_over_the_line_limit() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in production_files().items()}
    over = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them on their seams): {over}"


def test_the_size_count_tells_named_constants_from_bare_literals() -> None:
    """The checker itself: module-level UPPER_CASE names own the literals of their value, nothing else does."""
    tree = ast.parse(
        "A = 4096\n_B: float = 1.0 / 1024\nC = D = 2048\nlower = 3000\nclass K:\n    E = 5000\n"
        "def f(rows=65_536):\n    return rows * 86_400 + 999\n"
    )
    bare, named = size_literals(tree)
    assert named == {("A", 4096), ("_B", 1024)}
    assert bare == {2048, 3000, 5000, 65_536, 86_400}


def test_no_size_constant_spelled_out_in_more_than_two_modules() -> None:
    bare, _ = size_constants(production_files())
    spread = {value: sorted(names) for value, names in sorted(bare.items()) if len(names) > MAX_MODULES_PER_SIZE}
    assert not spread, (
        f"size literals written bare in more than {MAX_MODULES_PER_SIZE} modules (name them where they are owned "
        f"and import them): {spread}"
    )


def test_no_named_size_constant_defined_in_two_modules() -> None:
    _, named = size_constants(production_files())
    copies = {f"{name} = {value}": sorted(where) for (name, value), where in sorted(named.items()) if len(where) > 1}
    assert not copies, f"the same size constant defined in several modules (import it from one): {copies}"


def test_the_published_layout_names_the_model_config_as_the_library_writes_it() -> None:
    from include.versions import MODEL_CONFIG
    from rqvae.io.checkpoint import CONFIG_NAME

    assert MODEL_CONFIG == CONFIG_NAME


# ------------------------------------------------------------------------------------ import side effects

ENVIRON_WRITES = ("setdefault", "update", "pop", "putenv", "unsetenv")


def side_effects(tree: ast.Module) -> list[str]:
    """Module-level statements that act on the process when the module is imported: a bare call (beside the
    docstring), or a write to os.environ. Assignments of constants, loggers and the like are not counted."""
    found = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            found.append(f"line {stmt.lineno}: call {ast.unparse(stmt.value)[:60]}")
        for node in ast.walk(stmt) if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) \
                else ():
            target = node.func if isinstance(node, ast.Call) else node
            text = ast.unparse(target) if isinstance(target, ast.expr) else ""
            if "environ" in text and (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
                                      or text.endswith(ENVIRON_WRITES) or text in ("os.putenv", "os.unsetenv")):
                found.append(f"line {stmt.lineno}: environment write {text[:60]}")
    return list(dict.fromkeys(found))


def test_the_side_effect_check_finds_calls_and_environment_writes() -> None:
    tree = ast.parse('"""doc"""\nimport os\nlog = get_logger()\nconfigure()\nos.environ["A"] = "1"\n'
                     "os.environ.setdefault('B', '2')\ndef f():\n    os.environ['C'] = '3'\n")
    assert sorted({f.split(":")[0] for f in side_effects(tree)}) == ["line 4", "line 5", "line 6"]


def test_importing_rqvae_or_include_has_no_side_effects() -> None:
    found = {}
    for name, path in production_files().items():
        if name.split(".")[0] in PACKAGES:
            effects = side_effects(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
            if effects:
                found[name] = effects
    assert not found, f"module-level side effects (move them into the entry point that owns the process): {found}"


# ---------------------------------------------------------------------------------------- one vocabulary

MODES_MODULE = "rqvae.modes"


def mode_values() -> dict[str, str]:
    """Every value (and alias) a Mode of rqvae/modes.py defines -> its class name, read from the source."""
    tree = ast.parse((REPO / "rqvae" / "modes.py").read_text(encoding="utf-8"))
    values: dict[str, str] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.bases):
        for node in ast.walk(cls):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(
                    node.value.value, str):
                values[node.value.value] = cls.name
            if isinstance(node, ast.Dict):  # aliases()
                values.update({k.value: cls.name for k in node.keys if isinstance(k, ast.Constant)})
    return values


def mode_literals(tree: ast.Module, values: dict[str, str]) -> list[str]:
    """Places where a mode's value is spelled as a mode: compared with, given as a default (of a parameter or
    a config field), or listed together with another value of the same mode."""

    def mode(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values:
            return node.value
        return None

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                elements = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                found += [f"line {node.lineno}: compared with {v!r}" for e in elements if (v := mode(e))]
        elif isinstance(node, ast.arguments):
            for default in (*node.defaults, *node.kw_defaults):
                if (v := mode(default)) is not None:
                    found.append(f"line {default.lineno}: default {v!r}")
        elif isinstance(node, ast.AnnAssign) and (v := mode(node.value)) is not None:
            found.append(f"line {node.lineno}: field default {v!r}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("option") and node.args:
            if (v := mode(node.args[0])) is not None:
                found.append(f"line {node.lineno}: option default {v!r}")
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            kinds = [values[v] for e in node.elts if (v := mode(e))]
            if any(kinds.count(k) > 1 for k in kinds):
                found.append(f"line {node.lineno}: lists {[mode(e) for e in node.elts if mode(e)]}")
    return found


def test_the_mode_check_finds_comparisons_defaults_and_lists() -> None:
    values = {"dedup": "CollisionMode", "reassign": "CollisionMode", "auto": "RunMode"}
    tree = ast.parse('def f(mode="dedup", rows=3):\n    return mode == "reassign" or mode in ("x", "auto")\n'
                     'MODES = ("dedup", "reassign")\ntable["dedup"] = 1\nname = "auto"\n')
    assert sorted(f.split(":")[1].strip() for f in mode_literals(tree, values)) == [
        "compared with 'auto'", "compared with 'reassign'", "default 'dedup'", "lists ['dedup', 'reassign']"]


def test_no_mode_value_is_spelled_outside_its_enum() -> None:
    values = mode_values()
    assert {"dedup", "reassign", "rqkmeans", "progressive", "euclidean", "anchor", "incremental", "bf16"} <= set(values)
    found = {}
    for name, path in production_files().items():
        if name == MODES_MODULE:
            continue
        places = mode_literals(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), values)
        if places:
            found[name] = places
    assert not found, f"mode values spelled outside rqvae/modes.py (use the Mode's member): {found}"


# ------------------------------------------------------------------------------------------------ stages

DAG_FILES = ("rqvae_semantic_ids.py", "semantic_ids_evaluation.py", "semantic_ids_promote.py")


def task_ids() -> set[str]:
    """The task ids of the DAG files, read from their `task_id="..."` arguments."""
    ids = set()
    for file in DAG_FILES:
        for node in ast.walk(ast.parse((REPO / "dags" / file).read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "task_id" and isinstance(node.value, ast.Constant):
                ids.add(node.value.value)
    return ids


def literal_defaults(tree: ast.Module, names: set[str] | None = None) -> list[str]:
    """Parameters given a literal default other than None, in the functions called ``names`` (None: any)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (names is None or node.name in names):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if isinstance(default, ast.Constant) and default.value is not None:
                    found.append(f"{node.name}({arg.arg}={default.value!r})")
    return found


def test_include_stages_holds_one_module_per_task_id() -> None:
    modules = {p.stem for p in (REPO / "include" / "stages").glob("*.py") if p.stem != "__init__"}
    ids = task_ids()
    assert len(ids) >= 14, ids
    assert modules == ids, f"modules without a task: {sorted(modules - ids)}; no module: {sorted(ids - modules)}"
    for module in modules:  # the task's function is named after it
        tree = ast.parse((REPO / "include" / "stages" / f"{module}.py").read_text(encoding="utf-8"))
        assert module in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, module


def test_no_literal_default_in_a_stage_signature() -> None:
    """The function a task calls takes what the form and the config objects say; a default of its own would be
    a second default that the DAG silently overrides or, worse, does not."""
    found = {p.stem: d for p in sorted((REPO / "include" / "stages").glob("*.py"))
             if (d := literal_defaults(ast.parse(p.read_text(encoding="utf-8")), {p.stem}))}
    assert not found, f"stage parameters with their own default (take it from the config object): {found}"
    assert literal_defaults(ast.parse("def f(a, b=None, *, c=7, d=X):\n    pass\n")) == ["f(c=7)"]


def test_rqvae_top_level_is_the_public_face() -> None:
    top = sorted(p.name for p in (REPO / "rqvae").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    packages = sorted(p.name for p in (REPO / "rqvae").iterdir() if (p / "__init__.py").is_file())
    assert packages == ["encoding", "ids", "io", "quantize", "retrieval", "training"], packages
