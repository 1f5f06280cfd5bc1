"""House rules of the package that a reader relies on (no model, no data)."""
import ast

from conftest import ROOT

MAX_FUNCTION_LINES = 60


def test_no_function_in_the_package_is_longer_than_60_lines():
    long = []
    for path in sorted((ROOT / "ptqdet").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_paddle_program_tables_have_one_home():
    """The quantize-op prefixes and weight-slot tables live in ptqdet.paddle_static only."""
    defined = {}
    for path in sorted((ROOT / "ptqdet").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith(("_PREFIXES", "WEIGHT_SLOTS",
                                                                            "WEIGHT_INPUTS", "QDQ_OP_TYPES")):
                        defined.setdefault(target.id, []).append(path.name)
    assert defined and all(files == ["paddle_static.py"] for files in defined.values()), defined


def _package_imports() -> dict[str, set[str]]:
    """ptqdet module -> the ptqdet modules it imports, anywhere in the file (inside functions too)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in (ROOT / "ptqdet").rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            found |= {c for c in candidates if c in modules and c != name}
        graph[name] = found
    return graph


def test_no_import_cycles_in_the_package():
    """No ptqdet module imports one that imports it back, directly or through others."""
    graph = _package_imports()
    assert "ptqdet.pipeline" in graph and "ptqdet.files" in graph["ptqdet.pipeline"]  # the graph is read
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]) if dep in path else f"{module} -> {dep}")
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_one_runner_factory_and_one_options_class():
    """Predictor( is called only by backends.open_backend; no other options class for runners."""
    calls, classes = [], []
    for path in sorted([*(ROOT / "ptqdet").rglob("*.py"), *(ROOT / "tools").glob("*.py"), *ROOT.glob("*.py")]):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Predictor":
                calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ClassDef) and node.name.endswith("Options") and node.name not in (
                    "BackendOptions", "AnalysisOptions", "ParallelOptions", "DemoOptions"):
                classes.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert len(calls) == 1 and calls[0].startswith("ptqdet/backends.py"), calls
    assert not classes, classes
