"""gmta/proto stays sans-I/O: it imports no gevent, socket, ssl or os (DESIGN §3)."""

import ast
from pathlib import Path

import gmta.proto

FORBIDDEN = {"gevent", "socket", "ssl", "os", "selectors", "asyncio", "subprocess", "io"}
PACKAGE = Path(gmta.proto.__file__).parent


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_sources_exist():
    assert len(list(PACKAGE.glob("*.py"))) >= 5


def test_no_io_imports():
    for path in PACKAGE.glob("*.py"):
        for module in imported_modules(path):
            assert module.split(".")[0] not in FORBIDDEN, f"{path.name} imports {module}"
