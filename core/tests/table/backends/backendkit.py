"""Helpers shared by the table tests and tools: install a backend script as
``table-NAME`` in a folder, the way ports install them in libexec."""

from __future__ import annotations

import os
import sys

BACKENDS = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(BACKENDS, "..", "..", "..", "src"))


def install(folder: str, backend: str, script: str) -> str:
    """Write ``folder/table-<backend>``: a script running ``BACKENDS/<script>``.

    The shebang names this interpreter, so the program keeps its virtual
    environment; mailrider's sources are put on sys.path.
    """
    path = os.path.join(folder, f"table-{backend}")
    target = os.path.join(BACKENDS, script)
    with open(path, "w") as f:
        f.write(
            f"#!{sys.executable}\n"
            "import runpy, sys\n"
            f"sys.path.insert(0, {SRC!r})\n"
            f"sys.path.insert(0, {BACKENDS!r})\n"
            f"runpy.run_path({target!r}, run_name='__main__')\n"
        )
    os.chmod(path, 0o755)
    return path
