"""The layout's rules, read from the source (docs/architecture.md): Click only in the CLI, a library that never
prints or exits, modules and signatures of a readable size, imports that flow one way, scripts that import the
installed package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "barcodetool"
MAX_MODULE_LINES = 700
MAX_PARAMETERS = 12
MAX_FUNCTION_IMPORTS = 30     # imports of the package's own modules inside functions (kept for torch-free paths)
SCRIPT_FOLDERS = ("benchmarks", "weights/recipes", "docs/research", "docs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in MODULES.items()}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(name: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement in module `name` loads (its targets and their parent packages)."""
    targets = []
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            base = name.split(".") if is_package(name) else name.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        targets = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
    found = []
    for target in targets:
        if target in MODULES and target != name:
            found.append(target)
        parts = target.split(".")
        for end in range(1, len(parts)):   # importing a.b.c runs a and a.b first (already running for our own)
            parent = ".".join(parts[:end])
            if parent in MODULES and parent != name and not name.startswith(parent + "."):
                found.append(parent)
    return found


def imports(name: str) -> tuple[set[str], list[int]]:
    """(package modules imported at module level, line numbers of package imports inside functions)."""
    top, inside = set(), []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                targets = resolve(name, child)
                if in_function and targets:
                    inside.append(child.lineno)
                elif not in_function:
                    top.update(targets)
            elif isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue    # names for annotations only: nothing is imported at run time
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(TREES[name], False)
    return top, inside


def test_only_the_cli_imports_click():
    offenders = []
    for name, tree in TREES.items():
        if name == "barcodetool.cli" or name.startswith("barcodetool.cli."):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "click" for a in node.names):
                offenders.append(name)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "click" and not node.level:
                offenders.append(name)
    assert not offenders, f"Click imported outside barcodetool.cli: {offenders}"


def test_the_library_never_prints_or_exits():
    offenders = []
    for name, tree in TREES.items():
        # the program's own entry points may end the process: the CLI, `python -m`, and the early signal handler
        if name == "barcodetool.cli" or name.startswith("barcodetool.cli.") or name in {"barcodetool.__main__",
                                                                                         "barcodetool._startup"}:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in {"print", "exit", "quit"}:
                    offenders.append(f"{name}:{node.lineno} {func.id}()")
                if isinstance(func, ast.Attribute) and func.attr in {"exit", "_exit"} \
                        and isinstance(func.value, ast.Name) and func.value.id in {"sys", "os"}:
                    offenders.append(f"{name}:{node.lineno} {func.value.id}.{func.attr}()")
    assert not offenders, offenders


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]} has {lines} lines (at most {MAX_MODULE_LINES})"


def test_no_function_takes_more_than_twelve_parameters():
    wide = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                count = len([a for a in arguments if a.arg not in ("self", "cls")])
                # Click commands receive one parameter per option: the CLI's command functions are exempt
                is_command = any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") in {"command", "group"}
                                 for d in node.decorator_list)
                if count > MAX_PARAMETERS and not is_command:
                    wide.append(f"{name}.{node.name} ({count})")
    assert not wide, f"functions with more than {MAX_PARAMETERS} parameters: {wide}"


def test_imports_flow_one_way():
    graph = {name: imports(name)[0] for name in MODULES}
    cycles = []
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(node: str):
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_of_the_package_sit_at_the_top():
    inside = {name: imports(name)[1] for name in MODULES}
    total = sum(len(lines) for lines in inside.values())
    listing = {name: lines for name, lines in inside.items() if lines}
    assert total <= MAX_FUNCTION_IMPORTS, f"{total} imports of the package inside functions: {listing}"


def test_scripts_import_the_installed_package():
    patched = []
    for folder in SCRIPT_FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            if "sys.path.insert" in text or "sys.path.append" in text or "sys.path[" in text:
                patched.append(str(path.relative_to(ROOT)))
    assert not patched, f"scripts that patch sys.path: {patched}"


def test_license_is_shipped():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in text and "Permission is hereby granted" in text
