"""Writing files: the one atomic text writer every package uses (reports, figures, bench
results), and the checks that an output location is usable, made before any work."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """An output location that cannot be written: a folder or device where a file should
    go, a parent that is a file, a folder without write permission."""


def default_mode(kind: str = "file") -> int:
    """The permissions a new file (0o666) or folder (0o777) gets under the current umask,
    as `open` and `mkdir` would give it (mkstemp and mkdtemp make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if kind == "folder" else 0o666) & ~umask


def check_folder(folder: str | os.PathLike) -> Path:
    """Refuse a folder that cannot be created or written in: its nearest existing ancestor
    must be a folder we may write in. Creates nothing; returns the folder."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"cannot create {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write in {existing}: permission denied")
    return folder


def output_file(path: str | os.PathLike) -> Path:
    """Where a file written to `path` really goes, checked before any work is done: a
    symlink is followed (the link stays, its target is written), an existing path that is
    not a regular file (a folder, a device such as /dev/full, a pipe) is refused, and so is
    a parent that cannot be created or written in."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    if real.exists() and not real.is_file():
        what = "a folder" if real.is_dir() else "not a regular file"
        raise OutputPathError(f"{path} is {what}; give the path of a file to write")
    check_folder(real.parent)
    return real


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to a temporary sibling, then rename it over `path`: a crash never
    leaves half a file. Follows a symlink (the link keeps pointing at the new text), refuses
    to replace anything but a regular file, creates the parent folders; an existing file
    keeps its permissions, a new one gets the umask's. Returns the path."""
    path = Path(path)
    real = output_file(path)
    mode = real.stat().st_mode & 0o7777 if real.exists() else default_mode()
    real.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", dir=real.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
