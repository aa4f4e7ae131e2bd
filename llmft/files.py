"""Writing files and folders so that a reader never sees half of one, with the modes the user expects.

Atomic: write beside the target, then rename. Modes: every file llmft writes ends up with the mode
a plain `open()` would give it under the user's umask (0o666 & ~umask; folders 0o777 & ~umask).
Temporary files (`tempfile.mkstemp`, `mkdtemp`) and some libraries (safetensors writes through an
owner-only temporary file) create 0600/0700, which would keep a teammate, a serving container
running as another user or a CI job from reading a model or a results file on a shared disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def current_umask() -> int:
    """The process's umask. Read from /proc where it can be: `os.umask` can only read it by setting
    it, which would briefly change it for every other thread of the process."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_modes(path: str | os.PathLike) -> None:
    """Set `path`, and everything under it if it is a folder, to the modes a plain `open()` or
    `mkdir()` would have given under the current umask. Symlinks are left alone."""
    umask = current_umask()
    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    os.chmod(path, folder_mode)
    for root, folders, files in os.walk(path):
        for name, mode in [(f, folder_mode) for f in folders] + [(f, file_mode) for f in files]:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), mode)


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call `write(temp_path)`, then rename the temp file to `path`; on failure nothing is left."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        give_default_modes(tmp)  # mkstemp made it owner-only
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        give_default_modes(tmp)  # whatever wrote into it (safetensors writes 0600 files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)  # a folder cannot be renamed onto a non-empty one
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
