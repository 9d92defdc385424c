"""Files only the service's own account may read: the instance folder, the database, the store and
everything written into them (students' sources, results, a config.py holding the secret key).

Modes are set explicitly, not left to the umask of whoever starts the process. An existing folder or
file that others can reach is tightened, and the log says so.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
log = logging.getLogger(__name__)


def tighten(path: Path, mode: int = FILE_MODE) -> None:
    """Set ``path`` to ``mode`` when others may reach it (a symbolic link is left alone)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return
    if st.st_mode & 0o077:
        os.chmod(path, mode)
        log.warning("%s was open to other users (mode %o); set to %o", path, st.st_mode & 0o777, mode)


def make_dir(path: str | Path) -> Path:
    """``path`` and any missing parents as 0700 folders (``Path.mkdir(parents=True)`` would give the
    parents the umask's mode); an existing ``path`` open to others is set to 0700."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:   # made by a concurrent process meanwhile
            pass
    tighten(path, DIR_MODE)
    return path


def touch(path: str | Path) -> Path:
    """An (empty) 0600 file at ``path`` unless it exists; an existing one open to others is set to
    0600. SQLite gives its -wal and -shm files the database file's mode."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    tighten(path, FILE_MODE)
    return path


def create(path: str | Path, data: bytes, *, sync: bool = False) -> None:
    """Write a new 0600 file (refused when ``path`` exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with open(fd, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` by a 0600 file holding ``text`` (a generated config.py with a secret key)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    create(path, text.encode("utf-8"))


def tighten_tree(root: str | Path) -> None:
    """Every folder under ``root`` (itself included) 0700, every file 0600, symbolic links untouched."""
    root = Path(root)
    os.chmod(root, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            if not os.path.islink(os.path.join(dirpath, d)):
                os.chmod(os.path.join(dirpath, d), DIR_MODE)
        for f in filenames:
            if not os.path.islink(os.path.join(dirpath, f)):
                os.chmod(os.path.join(dirpath, f), FILE_MODE)
