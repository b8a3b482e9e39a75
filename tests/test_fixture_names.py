"""No two fixtures in tests/ share a name: a module's fixture never shadows conftest.py's or another module's."""

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _fixture_name(node: ast.AST) -> str | None:
    """The fixture name that ``node`` defines, or None when it is not a fixture."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    for decorator in node.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        if ast.unparse(call.func if call else decorator) in ("pytest.fixture", "fixture"):
            given = [k.value.value for k in (call.keywords if call else []) if k.arg == "name"]
            return given[0] if given else node.name
    return None


def fixtures() -> dict[str, list[str]]:
    """Fixture name -> the places (``file:line``) that define it, over every Python file in tests/."""
    found = defaultdict(list)
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            name = _fixture_name(node)
            if name is not None:
                found[name].append(f"{path.relative_to(TESTS)}:{node.lineno}")
    return found


def test_no_two_fixtures_share_a_name():
    found = fixtures()
    assert len(found) > 10, "no fixtures found: has the parser stopped recognizing @pytest.fixture?"
    shared = {name: places for name, places in found.items() if len(places) > 1}
    assert not shared, f"fixtures defined more than once (give each its own name, for what it holds): {shared}"
