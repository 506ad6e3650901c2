"""`python -m fakeai` = `fakeai server` (no arguments: serve on 127.0.0.1:8000)."""
import sys

from fakeai.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0].startswith("-") and argv[0] not in ("--version", "-V", "--help", "-h"):
        argv = ["server", *argv]
    sys.exit(main(argv))
