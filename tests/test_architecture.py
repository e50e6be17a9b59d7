"""The package tree is the architecture (README, *Development*): rooms import only the rooms below
them, every module stays small, and a subpackage costs nothing to import."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parent.parent / "sentry_ext"
# Each room may import the rooms before it in this list (and itself); ``config`` is read by all.
ORDER = ("util", "awslambda", "delivery", "protocol", ("ingest", "insight"), "top")
MAX_LINES = 400


def _rank() -> Dict[str, int]:
    rank: Dict[str, int] = {}
    for i, rooms in enumerate(ORDER):
        for room in (rooms,) if isinstance(rooms, str) else rooms:
            rank[room] = i
    return rank


def _room(parts: Tuple[str, ...]) -> str:
    """The room of a module given its dotted parts below ``sentry_ext``."""
    return parts[0] if (PACKAGE / parts[0]).is_dir() else "top"


def _imports(path: Path) -> Iterator[Tuple[str, ...]]:
    """Every module of the package that ``path`` imports, as dotted parts below ``sentry_ext``."""
    own = path.relative_to(PACKAGE).with_suffix("").parts
    package = own[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = base + tuple(node.module.split(".")) if node.module else base
            if node.module:
                yield target
            else:  # from . import a, b: modules (or names) of that package
                for alias in node.names:
                    yield target + (alias.name,)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sentry_ext."):
            yield tuple(node.module.split(".")[1:])


def test_rooms_import_only_the_rooms_below_them() -> None:
    rank = _rank()
    wrong: List[str] = []
    seen: Set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).with_suffix("").parts
        room = _room(own)
        seen.add(room)
        for target in _imports(path):
            if target in (("config",), ("__version__",)) or target == ():
                continue
            other = _room(target)
            if other != room and rank[other] > rank[room]:
                wrong.append("%s imports %s" % ("/".join(own), ".".join(target)))
    assert not wrong, "imports that go up the room order %s:\n%s" % (ORDER, "\n".join(wrong))
    assert seen >= set(rank), "a room of ORDER is missing from the package: %s" % (set(rank) - seen)


def test_modules_are_small_and_subpackages_cost_nothing() -> None:
    big = ["%s: %d lines" % (p.relative_to(PACKAGE), n) for p in sorted(PACKAGE.rglob("*.py"))
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not big, "modules over %d lines:\n%s" % (MAX_LINES, "\n".join(big))
    heavy = [str(p.relative_to(PACKAGE)) for p in PACKAGE.glob("*/__init__.py") if p.read_text(encoding="utf-8").strip()]
    assert not heavy, "a subpackage's __init__.py must stay empty (imports cost start-up time): %s" % heavy
