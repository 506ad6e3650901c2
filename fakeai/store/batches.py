"""Batch records and their progress, on disk under `files_dir` (nothing to do in memory mode).

Strategy: a batch's record (the Batch object plus private keys) is one JSON
file, `<files_dir>/batches/<id>.json`, replaced atomically at every state
change, so a restart finds each batch in its last state. The lines finished
so far are appended to `<id>.progress.jsonl` as they finish (one write each,
to an append-only file): a process that dies loses at most the line being
written, and `progress()` drops a torn last line. The progress file is
removed once the batch's output file is stored. Methods block on I/O: the
batch runner calls `save` from a worker thread; `append` is one small write.
"""
from __future__ import annotations

import os

import orjson

from fakeai.store import disk


class BatchStore:
    def __init__(self, directory: str = ""):
        self.dir = os.path.join(directory, "batches") if directory else ""
        self._logs: dict[str, object] = {}  # batch id -> open progress file
        if self.dir:
            os.makedirs(self.dir, exist_ok=True)
            disk.sweep_tmp(self.dir)

    @property
    def persistent(self) -> bool:
        return bool(self.dir)

    def load(self) -> list[dict]:
        """Every saved record, oldest first."""
        if not self.dir:
            return []
        out = []
        for name in os.listdir(self.dir):
            if name.endswith(".json"):
                with open(os.path.join(self.dir, name), "rb") as f:
                    out.append(orjson.loads(f.read()))
        return sorted(out, key=lambda r: r["_created_ns"])

    def save(self, record: bytes, batch_id: str) -> None:
        """`record`: the serialized record (taken on the loop, written from any thread)."""
        if self.dir:
            disk.atomic_write(os.path.join(self.dir, batch_id + ".json"), record)

    def append(self, batch_id: str, entry: dict) -> None:
        if not self.dir:
            return
        f = self._logs.get(batch_id)
        if f is None:
            f = self._logs[batch_id] = open(os.path.join(self.dir, batch_id + ".progress.jsonl"), "a+b",
                                            buffering=0)
            if f.tell():  # resumed after a crash mid-write: end the torn line so the next one parses
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        f.write(orjson.dumps(entry) + b"\n")

    def progress(self, batch_id: str) -> list[dict]:
        if not self.dir:
            return []
        try:
            with open(os.path.join(self.dir, batch_id + ".progress.jsonl"), "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:  # the torn tail of a crash (or the empty string after the last \n)
                pass
        return out

    def close(self, batch_id: str, drop: bool) -> None:
        """Stop appending; `drop`: the progress is in an output file now, remove it."""
        f = self._logs.pop(batch_id, None)
        if f is not None:
            f.close()
        if drop and self.dir:
            disk.remove(os.path.join(self.dir, batch_id + ".progress.jsonl"))
