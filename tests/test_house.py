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
