"""The README's commands still exist: every ``tools/...`` script (or ``-m tools.x`` module) named in
a fenced ``sh`` block of README.md or tools/deploy/README.md exists, and every ``--flag`` given to
it is in its ``--help``. Only ``sh`` blocks are read, so prose and sample output are not mistaken
for commands."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "tools" / "deploy" / "README.md"]
FENCE = re.compile(r"^```sh[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SCRIPT = re.compile(r"^(?:\./)?(tools/[\w/.-]+\.(?:py|sh))$")
SEPARATORS = {";", "&&", "||", "|", "&", "do", "done", "then", "fi"}


def sh_blocks(text: str) -> List[str]:
    return [m.group(1) for m in FENCE.finditer(text)]


def shell_lines(block: str) -> Iterator[List[str]]:
    """Each logical line (backslash continuations joined) as shell words, comments dropped,
    ``;``/``&&``/``|`` as words of their own."""
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:  # an unbalanced quote: not a command this test can read
            continue
        if words:
            yield words


def commands(text: str) -> Iterator[Tuple[str, List[str]]]:
    """``(script path or module, [words after it up to the next separator])``."""
    for block in sh_blocks(text):
        for words in shell_lines(block):
            for i, word in enumerate(words):
                target: Optional[str] = None
                match = SCRIPT.match(word)
                if match:
                    target = match.group(1)
                elif word == "-m" and i + 1 < len(words) and words[i + 1].startswith("tools."):
                    target = words[i + 1]
                    i += 1
                if target is None:
                    continue
                rest: List[str] = []
                for arg in words[i + 1:]:
                    if arg in SEPARATORS:
                        break
                    rest.append(arg)
                yield target, rest


def documented() -> Dict[Tuple[str, str], Set[str]]:
    """``{(doc, target): {flags}}`` over both documents."""
    found: Dict[Tuple[str, str], Set[str]] = {}
    for doc in DOCS:
        for target, args in commands(doc.read_text(encoding="utf-8")):
            if target == "tools/dev.py":  # dev.py demo ARGS -> the demo's flags; dev.py test ARGS are pytest's
                if args[:1] == ["demo"]:
                    target, args = "tools/demo.py", args[1:]
                else:
                    args = []
            flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
            found.setdefault((doc.relative_to(ROOT).as_posix(), target), set()).update(flags)
    return found


def script_path(target: str) -> Path:
    if target.startswith("tools."):
        base = ROOT / Path(*target.split("."))
        return base / "__main__.py" if base.is_dir() else base.with_suffix(".py")
    return ROOT / target


@lru_cache(maxsize=None)
def help_text(target: str) -> str:
    path = script_path(target)
    if path.suffix == ".sh":
        cmd = ["sh", str(path), "--help"]
    elif target.startswith("tools."):
        cmd = [sys.executable, "-m", target, "--help"]
    else:
        cmd = [sys.executable, str(path), "--help"]
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, "%s --help failed:\n%s" % (target, proc.stderr[-2000:])
    return proc.stdout + proc.stderr


DOCUMENTED = documented()


def test_the_readme_documents_the_tools() -> None:
    """The extraction works: the commands a user is told about are found."""
    targets = {target for _, target in DOCUMENTED}
    for expected in ("tools/dev.py", "tools/demo.py", "tools/build_layer.py", "tools/emulator/cli.py",
                     "tools/deploy/attach-layer.sh", "tools/deploy/publish-layer.sh"):
        assert expected in targets
    assert "--all-pythons" in DOCUMENTED[("README.md", "tools/build_layer.py")]


@pytest.mark.parametrize("doc, target", sorted(DOCUMENTED), ids=["%s:%s" % k for k in sorted(DOCUMENTED)])
def test_documented_command_exists_with_its_flags(doc: str, target: str) -> None:
    path = script_path(target)
    assert path.is_file(), "%s names %s, which does not exist" % (doc, target)
    text = help_text(target)
    missing = [flag for flag in sorted(DOCUMENTED[(doc, target)])
               if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(flag), text)]
    assert not missing, "%s documents %s %s, not in its --help" % (doc, target, " ".join(missing))


def test_extraction_reads_only_sh_blocks_and_joins_continuations() -> None:
    text = (
        "Run `python3 tools/nowhere.py --gone` (prose).\n\n"
        "```\npython3 tools/not_sh.py --no\n```\n\n"
        "```sh\npython3 tools/a.py --one \\\n    --two=2 x  # python3 tools/comment.py --three\n"
        "for v in 1 2; do docker run img python3 tools/b.py --four $v; done\n"
        ".venv/bin/python -m tools.c --five && tools/d.sh --six\n```\n"
    )
    assert list(commands(text)) == [
        ("tools/a.py", ["--one", "--two=2", "x"]),
        ("tools/b.py", ["--four", "$v"]),
        ("tools.c", ["--five"]),
        ("tools/d.sh", ["--six"]),
    ]
