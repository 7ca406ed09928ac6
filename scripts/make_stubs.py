"""Regenerate python/gemma3_edge/_core.pyi from the built extension with pybind11-stubgen.

Run after changing a binding: pip install pybind11-stubgen && python scripts/make_stubs.py
The vec submodule (test access to the float kernels) is declared as a module attribute.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pybind11_stubgen", "gemma3_edge._core", "-o", tmp], check=True)
        generated = Path(tmp) / "gemma3_edge" / "_core"
        text = (generated / "__init__.pyi").read_text(encoding="utf-8")
    text = text.replace("from . import vec\n", "import types\n")
    if "vec: types.ModuleType" not in text:
        text += "\nvec: types.ModuleType  # float32 vector kernels of each instruction set, for tests\n"
    target = REPO / "python" / "gemma3_edge" / "_core.pyi"
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
