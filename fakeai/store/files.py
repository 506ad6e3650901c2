"""Uploaded files (/v1/files) and the files batches write: in memory, or on disk under `files_dir`.

Strategy: the metadata of every file (OpenAI's File object plus a private
creation time in ns that orders files created in the same second) lives in
one insertion-ordered dict guarded by a lock; the bytes live in that dict
too (memory mode) or in `<files_dir>/files/<id>.bin` (disk mode). On disk a
file is two atomic writes, bytes first and then `<id>.json`: the metadata
file is the commit point, so a crash leaves either a whole file or an orphan
`.bin` that start-up removes. In disk mode the methods that touch bytes
block on I/O: the API layer runs them in a worker thread, and the lock is
never held across I/O. A file past its `expires_at` is removed the next time
it is looked up or listed.
"""
from __future__ import annotations

import os
import secrets
import string
import threading
import time

import orjson

from fakeai.store import disk, public

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")  # what a client may upload
_ALPHABET = string.ascii_letters + string.digits


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_ALPHABET) for _ in range(22))


class FileStore:
    def __init__(self, directory: str = ""):
        self.dir = os.path.join(directory, "files") if directory else ""
        self._meta: dict[str, dict] = {}
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._loaded_by = os.getpid()
        if self.dir:
            os.makedirs(self.dir, exist_ok=True)
            self._load()

    def reopen(self) -> None:
        """In the process that serves the store: read the directory again if another process loaded it (a worker
        forked from the supervisor, maybe long after start-up: the files written since are on disk only)."""
        if self.dir and self._loaded_by != os.getpid():
            with self._lock:
                self._meta.clear()
                self._loaded_by = os.getpid()
                self._load()

    @property
    def persistent(self) -> bool:
        return bool(self.dir)

    def _path(self, file_id: str, ext: str) -> str:
        return os.path.join(self.dir, file_id + ext)

    def _load(self) -> None:
        disk.sweep_tmp(self.dir)
        metas, names = [], set(os.listdir(self.dir))
        for name in names:
            if name.endswith(".json") and name[:-5] + ".bin" in names:
                with open(os.path.join(self.dir, name), "rb") as f:
                    metas.append(orjson.loads(f.read()))
        for name in names:  # bytes whose metadata never got written: an upload cut short
            if name.endswith(".bin") and name[:-4] + ".json" not in names:
                disk.remove(os.path.join(self.dir, name))
        for m in sorted(metas, key=lambda m: m["_created_ns"]):
            self._meta[m["id"]] = m

    # ------------------------------------------------------------------ writes (blocking in disk mode)
    def add(self, data: bytes, filename: str, purpose: str, ttl: int | None = None) -> dict:
        """Store a new file; `ttl`: seconds until it expires (None: never)."""
        ns = time.time_ns()
        created = ns // 1_000_000_000
        meta = {"id": new_file_id(), "object": "file", "bytes": len(data), "created_at": created,
                "filename": filename, "purpose": purpose, "status": "processed",
                "expires_at": None if ttl is None else created + ttl,
                "status_details": None, "_created_ns": ns}
        if self.dir:
            disk.atomic_write(self._path(meta["id"], ".bin"), data)
            disk.atomic_write(self._path(meta["id"], ".json"), orjson.dumps(meta))
        with self._lock:
            self._meta[meta["id"]] = meta
            if not self.dir:
                self._data[meta["id"]] = data
        return public(meta)

    def delete(self, file_id: str) -> bool:
        with self._lock:
            meta = self._meta.pop(file_id, None)
            self._data.pop(file_id, None)
        if meta is not None and self.dir:
            disk.remove(self._path(file_id, ".json"))  # the commit point goes first
            disk.remove(self._path(file_id, ".bin"))
        return meta is not None

    # ------------------------------------------------------------------ reads
    def content(self, file_id: str) -> bytes | None:
        """The file's bytes, or None when there is no such file (blocking in disk mode)."""
        if self.get(file_id) is None:
            return None
        if not self.dir:
            return self._data.get(file_id)
        try:
            with open(self._path(file_id, ".bin"), "rb") as f:
                return f.read()
        except FileNotFoundError:  # deleted meanwhile
            return None

    def get(self, file_id: str) -> dict | None:
        meta = self._meta.get(file_id)
        if meta is None:
            return None
        if self._expired(meta):
            self.delete(file_id)
            return None
        return public(meta)

    def list(self, purpose: str | None = None) -> list[dict]:
        """Live files, oldest first."""
        with self._lock:
            metas = list(self._meta.values())
        out = []
        for m in metas:
            if self._expired(m):
                self.delete(m["id"])
            elif purpose is None or m["purpose"] == purpose:
                out.append(public(m))
        return out

    @staticmethod
    def _expired(meta) -> bool:
        exp = meta["expires_at"]
        return exp is not None and time.time() >= exp
