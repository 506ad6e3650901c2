"""Build the optional Cython speedups in fakeai/_speedups/.

Every compiled module has a pure-Python twin, so a failed or impossible build
(no compiler, no Cython) still leaves a working install: we warn and go on.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ["httpparse", "scheduler", "kvcache", "metricsbuf", "policy"]


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # this module failed: its pure twin serves
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        sys.stderr.write(f"fakeai: compiled speedups not built ({exc}); pure-Python twins will be used\n")


def extensions():
    if os.environ.get("FAKEAI_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    pthread = ["-pthread"]  # policy.pyx's process-shared mutex (libpthread before glibc 2.34)
    exts = [Extension(f"fakeai._speedups.{m}", [f"fakeai/_speedups/{m}.pyx"], extra_compile_args=pthread,
                      extra_link_args=pthread) for m in MODULES if os.path.exists(f"fakeai/_speedups/{m}.pyx")]
    return cythonize(exts, language_level=3, quiet=True,
                     compiler_directives={"boundscheck": False, "wraparound": False})


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
