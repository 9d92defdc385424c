"""The durable store: submissions are written once (temp dir, fsync, rename) before they are
acknowledged; grading artifacts are kept per job. Keys are generated here, never taken from input.
Everything is written readable by the service's account only (grader/service/private.py)."""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

from grader.engine.run import submission_digest

from .private import DIR_MODE, create, make_dir, tighten_tree


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    UPLOAD_NAME = ".upload"  # the archive as received (never served: not a lab file name)

    def put_submission(self, files: dict[str, bytes], upload: bytes | None = None
                       ) -> tuple[str, str, dict[str, str]]:
        """Write the files (and the archive as uploaded) durably. Returns (storage key, content
        digest, per-file sha256)."""
        digest, per_file = submission_digest(files)
        key = f"submissions/{digest[:2]}/{digest[:16]}-{secrets.token_hex(8)}"
        final = self.root / key
        make_dir(final.parent)
        tmp = final.parent / (".tmp-" + final.name)
        tmp.mkdir(mode=DIR_MODE)
        try:
            items = list(files.items()) + ([(self.UPLOAD_NAME, upload)] if upload is not None else [])
            for name, data in items:
                create(tmp / name, data, sync=True)
            self._fsync_dir(tmp)
            os.rename(tmp, final)
            self._fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return key, digest, per_file

    @staticmethod
    def bytes_for(files: dict[str, bytes], upload: bytes | None) -> int:
        """The bytes put_submission keeps for these files and archive."""
        return sum(len(b) for b in files.values()) + len(upload or b"")

    def kept_bytes(self, key: str) -> int:
        """The bytes kept on disk for a submission (its files and the archive as uploaded)."""
        d = self._inside(key)
        return sum(p.stat().st_size for p in d.iterdir() if p.is_file()) if d.is_dir() else 0

    def submission_dir(self, key: str) -> Path:
        return self._inside(key)

    def verify_submission(self, key: str, per_file: dict[str, str]) -> bool:
        d = self._inside(key)
        return all(hashlib.sha256((d / n).read_bytes()).hexdigest() == h for n, h in per_file.items())

    def remove(self, key: str) -> None:
        shutil.rmtree(self._inside(key), ignore_errors=True)

    def artifacts_key(self, job_id: int) -> str:
        return f"artifacts/job-{int(job_id)}"

    def put_artifacts(self, job_id: int, src: Path) -> str:
        key = self.artifacts_key(job_id)
        dest = self._inside(key)
        if dest.exists():
            shutil.rmtree(dest)
        make_dir(dest.parent)
        shutil.copytree(src, dest, symlinks=False)
        tighten_tree(dest)
        return key

    def artifact_path(self, key: str, name: str) -> Path | None:
        """The file `name` of an artifacts folder, or None (also for any name that is not a plain file
        name inside it)."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            return None
        p = self._inside(key) / name
        return p if p.is_file() and not p.is_symlink() else None

    def _inside(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"storage key {key!r} escapes the store")
        return p
