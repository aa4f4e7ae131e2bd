"""Atomic writes: a reader sees the old file or folder, or the new one, never half of one; and what
is written gets the modes a plain open()/mkdir() would give under the umask."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmft.files import atomic_folder, write_atomic, write_text_atomic


def test_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("export failed")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_folder(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_mode_a_plain_open_gives_under_the_umask(tmp_path, umask):
    """Atomic writes go through an owner-only temp file; the result must not stay 0600 under umask 022
    (a teammate could not read it), nor be wider than the umask allows under 077."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert mode(plain) == 0o666 & ~umask  # what the user expects, as open() gives it
    write_text_atomic(tmp_path / "results.json", "{}")

    def narrow_writer(tmp: str) -> None:  # a library that sets its own mode
        Path(tmp).write_text("x")
        os.chmod(tmp, 0o640)

    write_atomic(tmp_path / "cache.parquet", narrow_writer)
    assert mode(tmp_path / "results.json") == mode(tmp_path / "cache.parquet") == mode(plain)


def test_a_written_folder_gets_the_modes_a_plain_mkdir_and_open_give(tmp_path, umask):
    """Libraries write 0600 files (safetensors) or 0700 folders (mkdtemp) into an export folder."""
    with atomic_folder(tmp_path / "model") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        sub = Path(tempfile.mkdtemp(dir=tmp))
        handle, name = tempfile.mkstemp(dir=sub)
        os.close(handle)
        (tmp / "wide.json").write_text("{}")
        os.chmod(tmp / "wide.json", 0o666)
    out = tmp_path / "model"
    assert mode(out) == 0o777 & ~umask
    files = [p for p in out.rglob("*") if p.is_file()]
    folders = [p for p in out.rglob("*") if p.is_dir()]
    assert len(files) == 3 and len(folders) == 1
    assert {mode(p) for p in files} == {0o666 & ~umask}
    assert {mode(p) for p in folders} == {0o777 & ~umask}
