"""Compiled speedups with pure-Python twins, chosen the aiohttp way.

Each module NAME here exists as NAME.pyx (compiled by setup.py) and _NAME_py.py
(the pure twin, same API). `load(NAME)` returns the compiled module when it was
built and FAKEAI_NO_EXTENSIONS is unset, else the twin. Tests import both
explicitly through `compiled(NAME)` and `pure(NAME)`.
"""
import importlib
import os

NO_EXTENSIONS = bool(os.environ.get("FAKEAI_NO_EXTENSIONS"))
MODULES = ("httpparse", "scheduler", "kvcache", "metricsbuf", "policy")


def pure(name):
    return importlib.import_module(f"fakeai._speedups._{name}_py")


def compiled(name):
    return importlib.import_module(f"fakeai._speedups.{name}")


def load(name):
    if not NO_EXTENSIONS:
        try:
            return compiled(name)
        except ImportError:
            pass
    return pure(name)


def active():
    """{module: "compiled" | "pure"} as the running server uses them."""
    return {m: ("pure" if load(m).__name__.rsplit(".", 1)[-1].startswith("_") else "compiled") for m in MODULES}
