"""The hostile catalogue (``tests/hostile.py``) is whole: every case has a verdict and a test that proves it, and every
test that claims a case names one of the catalogue."""

import ast
import subprocess
import sys
from pathlib import Path

from hostile import CASES, PROVEN_BY, VERDICTS

TESTS = Path(__file__).parent


def _marked_tests() -> dict[str, set[str]]:
    """``case -> {test node id}`` of every test function decorated with ``pytest.mark.hostile(...)``, read from the
    source (no import: fast, and a module that fails to import is still read)."""
    marked: dict[str, set[str]] = {}
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for decorator in node.decorator_list:
                call = decorator if isinstance(decorator, ast.Call) else None
                if call is not None and ast.unparse(call.func) == "pytest.mark.hostile":
                    for arg in call.args:
                        marked.setdefault(ast.literal_eval(arg), set()).add(f"tests/{path.name}::{node.name}")
    return marked


def _test_functions() -> set[str]:
    names = set()
    for path in TESTS.glob("test_*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(f"tests/{path.name}::{node.name}")
    return names


def test_every_case_has_a_verdict_and_a_proof():
    marked = _marked_tests()
    assert all(verdict in VERDICTS for _, _, verdict in CASES.values()), [
        (case, verdict) for case, (_, _, verdict) in CASES.items() if verdict not in VERDICTS
    ]
    unproven = sorted(case for case in CASES if not marked.get(case) and not PROVEN_BY.get(case))
    assert not unproven, f"cases without a test: {unproven}"


def test_every_claim_names_a_case_and_an_existing_test():
    unknown = sorted(set(_marked_tests()) - set(CASES))
    assert not unknown, f"tests marked with cases the catalogue lacks: {unknown}"
    assert not set(PROVEN_BY) - set(CASES)
    functions = _test_functions()
    missing = sorted(node for nodes in PROVEN_BY.values() for node in nodes if node not in functions)
    assert not missing, f"PROVEN_BY names tests that do not exist: {missing}"


def test_marker_reaches_the_tests_written_before_the_catalogue():
    """conftest.py gives PROVEN_BY's tests the marker, so that ``-m hostile`` reruns them (and only them)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "hostile", "tests/test_bench.py"],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    collected = [line for line in out.stdout.splitlines() if "::" in line]
    assert collected == ["tests/test_bench.py::test_interrupted_benchmark_keeps_finished_records"], out.stdout
