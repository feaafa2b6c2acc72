"""Regenerates notebooks/<name>.ipynb from its source notebooks/src/<name>.py (the only place a notebook's
cells are written; the .ipynb files are build outputs, committed without outputs).

    python notebooks/src/build.py            # all notebooks
    python notebooks/src/build.py quickstart # some

Each source module defines ``CELLS``: a list of ``("markdown" | "code", text)`` pairs. Cell ids are
``<name>-<index>`` so rebuilding an unchanged source gives a byte-identical file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent
NOTEBOOKS = SRC.parent
KINDS = ("markdown", "code")
METADATA = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def sources() -> dict[str, Path]:
    """``{name: path}`` of every notebook source (modules in notebooks/src/ not starting with ``_``, build.py aside)."""
    return {p.stem: p for p in sorted(SRC.glob("*.py")) if not p.stem.startswith("_") and p.stem != "build"}


def load_cells(name: str) -> list[tuple[str, str]]:
    paths = sources()
    if name not in paths:
        raise ValueError(f"no notebook source {name!r}; allowed: {sorted(paths)}")
    spec = importlib.util.spec_from_file_location(f"_notebook_src_{name}", paths[name])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cells = getattr(mod, "CELLS", None)
    if not isinstance(cells, list) or not cells:
        raise ValueError(f"{paths[name]} must define CELLS, a non-empty list of (kind, text) pairs")
    for i, cell in enumerate(cells):
        if not (isinstance(cell, tuple) and len(cell) == 2 and cell[0] in KINDS and isinstance(cell[1], str)):
            raise ValueError(f"{paths[name]}: CELLS[{i}]={cell!r} must be (kind, text) with kind in {KINDS}")
    return cells


def build(name: str):
    """The notebook ``name`` as an ``nbformat`` node (no outputs)."""
    import nbformat as nbf

    make = {"markdown": nbf.v4.new_markdown_cell, "code": nbf.v4.new_code_cell}
    cells = [make[kind](text.strip("\n"), id=f"{name}-{i}") for i, (kind, text) in enumerate(load_cells(name))]
    return nbf.v4.new_notebook(cells=cells, metadata=METADATA)


def write(name: str) -> Path:
    import nbformat as nbf

    out = NOTEBOOKS / f"{name}.ipynb"
    nbf.write(build(name), out)
    return out


def main(argv: list[str]) -> None:
    for name in argv or list(sources()):
        print("wrote", write(name).relative_to(NOTEBOOKS.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
