"""The house rules of the package, read from the code's own imports (docs/architecture.md#layers).

- Data flows one way: no import cycle between the product's modules.
- Only ``smart_app.web`` imports Flask; ``smart_app.clinical`` imports no HTTP code and nothing of the web,
  FHIR-client or SMART layers; ``smart_app.smart`` imports nothing of the web layer.
- The product never imports the sandbox (``launch``) or the tests.
- Concepts have one owner: the canonical URL base, the collector pause and the parsing of ``Location``
  headers each live in one module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "smart_app"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


KNOWN = frozenset(modules())


def imports(path: Path) -> Iterator[str]:
    """Every module an import statement names (relative imports resolved), including imports inside
    functions: a lazy import is an arrow too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from package import module`` depends on the module; ``from module import name`` on the module
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in KNOWN else base


def inside(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_imports() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported in imports(path):
            if imported.startswith("typing"):
                continue
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def runtime_imports(path: Path) -> Iterator[str]:
    """Imports that run (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


@pytest.mark.parametrize("name", sorted(modules()))
def test_only_the_web_layer_imports_flask(name: str) -> None:
    if inside(name, "smart_app.web") or name == "smart_app.serve":
        return
    flask_like = [
        m for m in runtime_imports(modules()[name]) if inside(m, "flask", "flask_session", "flask_wtf")
    ]
    assert flask_like == [], f"{name} imports {flask_like}"


@pytest.mark.parametrize("name", sorted(n for n in modules() if inside(n, "smart_app.clinical")))
def test_the_clinical_core_is_pure(name: str) -> None:
    banned = ("flask", "requests", "urllib3", "redis", "smart_app.web", "smart_app.fhir", "smart_app.smart")
    found = [m for m in imports(modules()[name]) if inside(m, *banned)]
    assert found == [], f"{name} imports {found}"


@pytest.mark.parametrize("name", sorted(n for n in modules() if inside(n, "smart_app.smart")))
def test_the_smart_layer_knows_no_web_layer(name: str) -> None:
    found = [m for m in imports(modules()[name]) if inside(m, "smart_app.web", "smart_app.clinical")]
    assert found == [], f"{name} imports {found}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_the_product_imports_neither_the_sandbox_nor_the_tests(name: str) -> None:
    found = [m for m in imports(modules()[name]) if inside(m, "launch", "tests", "benchmarks")]
    assert found == [], f"{name} imports {found}"


def test_no_import_cycle() -> None:
    graph = module_imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                # a package's __init__ re-exporting its own modules is not an arrow back up
                if not all(inside(m, cycle[0]) for m in cycle):
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def literal_owners(predicate: object) -> list[str]:
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and predicate(node.value):  # type: ignore[operator]
                found.append(name)
                break
    return found


def test_the_canonical_base_is_declared_once() -> None:
    assert literal_owners(lambda s: s.startswith("https://smart-app.example/fhir")) == [
        "smart_app.vocabulary"
    ]


def test_one_owner_of_the_collector_pause() -> None:
    owners = [n for n, p in modules().items() if "gc.disable()" in p.read_text(encoding="utf-8")]
    assert owners == ["smart_app.fhirjson"]


def test_one_owner_of_location_and_etag_parsing() -> None:
    owners = [
        n
        for n, p in modules().items()
        if "_history" in p.read_text(encoding="utf-8") and "ETag" in p.read_text(encoding="utf-8")
    ]
    assert set(owners) <= {"smart_app.fhirjson", "smart_app.fhir.client"}
    assert "def location_parts" in (PACKAGE / "fhirjson.py").read_text(encoding="utf-8")
