"""The public API: ``import metareg`` is cheap, every exported name resolves, and the README's worked example runs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import metareg

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "MetaRegistration" / "metareg"


def test_importing_the_package_loads_no_torch():
    code = "import sys, metareg; print(json.dumps(['torch' in sys.modules, 'SimpleITK' in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                          encoding="utf-8", check=True)
    assert json.loads(done.stdout) == [False, False]


def test_every_public_name_resolves_to_its_definition():
    for name in metareg.__all__:
        value = getattr(metareg, name)
        if name not in ("__version__", "metrics"):
            assert value.__name__ == name and value.__module__.startswith("metareg.core."), name
    assert metareg.metrics.__name__ == "metareg.core.metrics"
    assert set(metareg.__all__) <= set(dir(metareg))
    assert set(metareg.__all__) == {"__version__", *metareg._EXPORTS}  # the list and the lookup table agree
    try:
        metareg.no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("metareg.")}


def test_the_layers_import_downwards_only():
    """core imports neither learning nor app; learning does not import app (the layout says the layering)."""
    above = {"core": ("metareg.learning", "metareg.app"), "learning": ("metareg.app",)}
    for layer, forbidden in above.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            wrong = sorted(name for name in _imported_packages(path) if name.startswith(forbidden))
            assert not wrong, f"{path.relative_to(REPO)} imports {wrong}"


def test_the_readme_example_runs(tmp_path):
    """The README's Python API example, on the 2D sample pair (the example's text is checked to be the README's)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python\nimport metareg\n")
    example = readme[start + len("```python\n"): readme.index("```", start + 10)]
    sample = REPO / "Resources" / "SampleData"
    example = (example.replace('"fixed.nii.gz"', repr(str(sample / "brain2d_fixed.nii.gz")))
               .replace('"moving.nii.gz"', repr(str(sample / "brain2d_moving.nii.gz")))
               .replace('"brain-mr-3d-reptile"', '"multidomain-2d-reptile"')
               .replace('"warped.nii.gz"', repr(str(tmp_path / "warped.nii.gz"))))
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, encoding="utf-8",
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "NCC" in done.stdout and "folding" in done.stdout
    assert (tmp_path / "warped.nii.gz").stat().st_size > 1000
