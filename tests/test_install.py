"""A plain ``pip install -e .`` (no extras) must give a working ``lvi``: optional dependencies are imported
where they are used, and a family whose optional dependency is missing is still listed, with the install hint."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

from helpers import ROOT

STDLIB = set(sys.stdlib_module_names)
# Import names of the distributions in [project].dependencies (distribution name -> import name where they differ).
IMPORT_NAME = {"pillow": "PIL", "scikit-learn": "sklearn", "jsonargparse[signatures,omegaconf]": "jsonargparse",
               "lightning": "lightning", "pyyaml": "yaml"}


def _core_imports() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = set()
    for dep in deps:
        dist = dep.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip().lower()
        names.add(IMPORT_NAME.get(dist, dist.split("[")[0].replace("-", "_")))
    # Installed by those: lightning brings pytorch_lightning/lightning_utilities, jsonargparse brings yaml.
    return names | {"yaml", "lightning_utilities", "pytorch_lightning", "lightning_vi", "typing_extensions"}


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level names imported when the module is imported (function bodies are lazy, so skipped)."""
    out: set[str] = set()
    for node in tree.body:
        nodes = [node]
        if isinstance(node, (ast.If, ast.Try)):  # module-level try/except ImportError still imports at import time
            nodes = list(ast.walk(node))
        for n in nodes:
            if isinstance(n, ast.Import):
                out |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                out.add(n.module.split(".")[0])
    return out


def test_package_imports_only_core_dependencies_at_module_level():
    allowed = _core_imports() | STDLIB
    bad = {}
    for path in sorted((ROOT / "lightning_vi").rglob("*.py")):
        extra = _module_level_imports(ast.parse(path.read_text())) - allowed
        if extra:
            bad[str(path.relative_to(ROOT))] = sorted(extra)
    assert not bad, f"module-level imports of non-core dependencies (import them where used): {bad}"


BLOCK = "import sys; sys.modules['torchsde'] = None\n"  # an import of torchsde now fails, as if not installed


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_family_with_missing_dependency_is_listed_with_hint():
    proc = _run("from lightning_vi.cli import main; main(['families'])")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("fbm_sde "))
    assert "needs torchsde: pip install 'lightning-vi[sequence]'" in line
    assert any(ln.startswith("vae ") and "needs" not in ln for ln in proc.stdout.splitlines())


def test_lvi_fit_works_without_optional_dependency(tmp_path):
    code = (f"import os; os.chdir({str(tmp_path)!r}); from lightning_vi.cli import main; "
            f"main(['fit', '--config', {str(ROOT / 'configs/quickstart.yaml')!r}, '--trainer.fast_dev_run', 'true', "
            f"'--trainer.logger', 'false', '--trainer.callbacks', 'null', '--trainer.enable_progress_bar', 'false'])")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_using_family_with_missing_dependency_names_the_install_command():
    proc = _run("from lightning_vi.registry import FAMILIES\n"
                "cls = FAMILIES.get('fbm_sde')\n"
                "try:\n    cls()\nexcept ImportError as e:\n    print('ERR', e)\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERR fbm_sde needs torchsde: pip install 'lightning-vi[sequence]'" in proc.stdout
