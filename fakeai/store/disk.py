"""Crash-safe file writes for the stores.

Strategy: write to a temporary file in the same directory, fsync it, rename
it over the target (atomic on POSIX), then fsync the directory so the rename
itself survives a power cut. A reader therefore sees the old bytes or the new
ones, never a torn file; leftover temporaries (a crash mid-write) carry the
TMP suffix and are removed by `sweep_tmp` at start-up.
"""
from __future__ import annotations

import os
import secrets

TMP = ".tmp"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.{secrets.token_hex(6)}{TMP}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sweep_tmp(directory: str) -> None:
    for name in os.listdir(directory):
        if name.endswith(TMP):
            remove(os.path.join(directory, name))
