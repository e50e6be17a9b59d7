"""tools/build_layer.py: the complete layer (bytecode for every Lambda Python): ``--all-pythons``,
what the build says about missing versions, and ``--merge`` (bytecode built elsewhere, e.g. one
zip per Lambda build image)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import List, Optional

import pytest

from tools import build_layer
from tools.build_layer import LAMBDA_PYTHONS, BuildError, Interpreter, find_python

LIB = "sentry-lambda-extension"


def two_pythons() -> List[Interpreter]:
    found = [i for i in (find_python(m) for m in LAMBDA_PYTHONS) if i is not None]
    if len(found) < 2:
        pytest.skip("needs two Lambda Pythons on this machine, found %s" % [i.minor for i in found])
    return found[:2]


def one_python() -> Interpreter:
    """The first Lambda Python found on this machine (the test is skipped if there is none)."""
    here = next((i for i in (find_python(m) for m in LAMBDA_PYTHONS) if i is not None), None)
    if here is None:
        pytest.skip("no Lambda Python on this machine")
    return here


def test_merged_bytecode_equals_one_build_with_both_pythons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = two_pythons()
    a = build_layer.build(out_dir=tmp_path / "a", bytecode=first.minor)
    b = build_layer.build(out_dir=tmp_path / "b", bytecode=second.minor)
    assert set(a.bytecode) == {first.cache_tag} and set(b.bytecode) == {second.cache_tag}
    reference = build_layer.build(out_dir=tmp_path / "ref", bytecode="%s,%s" % (first.minor, second.minor))

    # "all" with both versions merged: neither is looked for on this machine, nothing is missing
    monkeypatch.setattr(build_layer, "LAMBDA_PYTHONS", (first.minor, second.minor))

    def no_lookup(minor: str, extra: object = ()) -> Optional[Interpreter]:
        raise AssertionError("looked for Python %s although merged" % minor)

    monkeypatch.setattr(build_layer, "find_python", no_lookup)
    merged = build_layer.build(out_dir=tmp_path / "m", bytecode="all", merge=[a.path, b.path])
    assert merged.missing_bytecode == []
    assert merged.bytecode == reference.bytecode
    assert merged.path.read_bytes() == reference.path.read_bytes()  # byte for byte: the build is reproducible


def test_merge_refuses_a_zip_built_from_other_sources(tmp_path: Path) -> None:
    built = build_layer.build(out_dir=tmp_path / "a", bytecode="none")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(built.path) as src, zipfile.ZipFile(other, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == LIB + "/sentry_ext/config.py":
                data += b"\n# patched\n"
            dst.writestr(info, data)
    with pytest.raises(BuildError, match="built from other sources .*config.py"):
        build_layer.build(out_dir=tmp_path / "m", bytecode="none", merge=[other])
    not_a_zip = tmp_path / "nope.zip"
    not_a_zip.write_bytes(b"not a zip")
    with pytest.raises(BuildError, match="cannot merge bytecode from"):
        build_layer.build(out_dir=tmp_path / "m", bytecode="none", merge=[not_a_zip])


def test_all_pythons_fails_naming_the_missing_version_and_the_fixes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    here = one_python()
    monkeypatch.setattr(build_layer, "LAMBDA_PYTHONS", (here.minor, "3.99"))
    out = tmp_path / "dist"
    assert build_layer.main(["--all-pythons", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no interpreter found for Python 3.99" in err
    for fix in ("pyenv install 3.99", "uv python install 3.99", "--python /path/to/python3.99",
                "public.ecr.aws/sam/build-python$v", "--merge dist/py3.*/*.zip --all-pythons"):
        assert fix in err
    assert not out.exists() or not list(out.iterdir())

    # the default (auto) builds what it can and says what is missing, and how to get it
    assert build_layer.main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bytecode for: %s (%s)" % (here.cache_tag, here.version) in text
    assert "MISSING bytecode for Python 3.99" in text and "pyenv install 3.99" in text


def test_uv_managed_pythons_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = one_python()
    # a uv install directory holding (a link to) a real interpreter, nothing else on the search path
    bin_dir = tmp_path / "uv" / ("cpython-%s.0-linux-x86_64-gnu" % here.minor) / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / ("python" + here.minor)).symlink_to(here.executable)
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "uv"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert build_layer._uv_pythons(here.minor) == [str(bin_dir / ("python" + here.minor))]
    found = find_python(here.minor)  # uv's directory is searched before /usr/bin and friends
    assert found is not None and found.executable == str(bin_dir / ("python" + here.minor))
