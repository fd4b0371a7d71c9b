"""The engine, MetaRegistrationLib and the Slicer module under the Python of the oldest supported 3D Slicer.

3D Slicer 5.10, the oldest Slicer this extension supports, ships Python 3.12 (3.12.10); the rest of the suite runs
on .venv's Python (3.11). Testing/setup_slicer_python.sh builds, or reuses, a second venv on a Python 3.12
(pyenv's newest 3.12.x, or $METAREG_SLICER_PYTHON) with pyproject.toml's packages — torch 2.13.0, numpy, SimpleITK,
safetensors, slicer-core — and the working tree on its sys.path. There:

- every .py file of MetaRegistration/ compiles with warnings as errors (3.12 turned invalid escape sequences such
  as "\\d" in a plain string into a SyntaxWarning, a step towards making them errors);
- every module of metareg and MetaRegistrationLib imports, and none of our own lines warns while doing so;
- MetaRegistration.py itself imports with stand-ins for what only the Slicer desktop has (qt, slicer.i18n,
  slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper): the module file loads under 3.12, its parameter
  node's annotations resolve against slicer-core's real MRML classes, and the Module and Logic classes construct.
  That is all the stand-ins show: the Widget needs Qt, and nothing here says how it behaves;
- a selection of the suite passes (pytest, in that venv: the engine on torch, the Slicer glue on slicer-core).

No Python 3.12 on the machine is a failure, not a skip: the message says how to get one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "MetaRegistration"
SETUP = REPO / "Testing" / "setup_slicer_python.sh"
#: The Python of 3D Slicer 5.10, the oldest Slicer MetaRegistration supports.
SLICER_PYTHON = (3, 12)
#: Set in the inner pytest run, so that this module never runs itself inside itself.
INNER = "METAREG_SLICER_PYTHON_INNER"

#: The part of the suite that runs again under Slicer's Python: the engine (geometry, metrics, image I/O, landmarks,
#: data sets, registration, the CLI's error paths) and the Slicer glue on slicer-core (node conversion, the panel's
#: wiring, fine-tuning from the scene, and the module's self-test body, which registers the 3D sample pair through
#: MetaRegistrationLib). Left out, to keep this to about a minute: what needs the benchmark data sets or peers
#: (test_bench_*), training (test_learning), the zoo and the demo (minutes of registrations of the same modules),
#: and test_slicer_brain3d (the self-test runs its pipeline; its views need OSMesa).
INNER_TESTS = (
    "test_geometry.py",
    "test_metrics.py",
    "test_imageio.py",
    "test_landmarks.py",
    "test_sample_data.py",
    "test_datasets.py",
    "test_registration.py",
    "test_networks.py",
    "test_modelio.py",
    "test_iterative.py",
    "test_losses.py",
    "test_cli_errors.py",
    "test_slicer_convert.py",
    "test_slicer_module_ui.py",
    "test_slicer_finetune.py",
    "test_slicer_selftest.py",
)
#: The tests on test_registration's 3D sample-pair fixture (about 40 s of registration): the self-test registers the
#: same 3D pair the same way, through MetaRegistrationLib.
INNER_DESELECT = (
    "test_registration.py::test_iterative_recovers_the_3d_sample_warp",
    "test_registration.py::test_registration_outputs_live_on_the_fixed_grid_and_inputs_are_untouched",
    "test_registration.py::test_mapped_points_follow_the_field",
)

pytestmark = [pytest.mark.slicer,
              pytest.mark.skipif(bool(os.environ.get(INNER)), reason="inside the Slicer-Python run already")]


@pytest.fixture(scope="module")
def slicer_python() -> str:
    """The venv's python on Python 3.12 (built on first use; a second or so when it is up to date)."""
    if sys.version_info[:2] == SLICER_PYTHON:
        return sys.executable
    try:
        done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{SETUP.name} did not finish within an hour:\n{error.stderr or ''}")
    if done.returncode != 0:
        pytest.fail(f"{SETUP.name} failed (exit status {done.returncode}); it said:\n{done.stderr}", pytrace=False)
    python = done.stdout.strip().splitlines()[-1]
    version = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert tuple(map(int, version)) == SLICER_PYTHON, f"{python} is Python {'.'.join(version)}"
    return python


def run_in(python: str, script: str, *args: str, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, INNER: "1", "PYTHONDONTWRITEBYTECODE": "1", **extra_env}
    env.pop("PYTHONPATH", None)
    return subprocess.run([python, "-c", textwrap.dedent(script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        pytest.fail(f"{what} failed under Python {'.'.join(map(str, SLICER_PYTHON))} "
                    f"(exit status {done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)


COMPILE = """
    import sys, warnings
    from pathlib import Path

    failures = []
    files = sorted(p for p in Path(sys.argv[1]).rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # SyntaxWarning and DeprecationWarning raise SyntaxError here
            try:
                compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
            except Exception as error:
                failures.append(f"{path}: {type(error).__name__}: {error}")
    print(f"compiled {len(files)} files")
    sys.exit("\\n".join(failures) or None)
"""


def test_every_file_compiles_with_warnings_as_errors(slicer_python):
    done = run_in(slicer_python, COMPILE, str(SOURCES))
    check(done, "compiling MetaRegistration/")
    count = int(done.stdout.split()[1])
    assert count >= 30, done.stdout  # the engine, the Lib and the module file were all found


IMPORT_ALL = """
    import importlib, sys, traceback, warnings
    from pathlib import Path

    root = Path(sys.argv[1]).resolve()
    names = []
    for package in ("metareg", "MetaRegistrationLib"):  # every module, subpackages (metareg.core, ...) included
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                parts = path.relative_to(root).with_suffix("").parts
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    failures = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception:
                failures.append(f"import {name}:\\n{traceback.format_exc()}")
                continue
            if not Path(module.__file__).resolve().is_relative_to(root):
                failures.append(f"{name} came from {module.__file__}, not from {root}")
    ours = [w for w in caught if Path(w.filename).resolve().is_relative_to(root)]
    failures += [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in ours]
    print(f"imported {len(names)} modules")
    sys.exit("\\n".join(failures) or None)
"""


def test_every_engine_and_lib_module_imports(slicer_python):
    done = run_in(slicer_python, IMPORT_ALL, str(SOURCES))
    check(done, "importing metareg and MetaRegistrationLib")
    on_disk = [path for package in ("metareg", "MetaRegistrationLib") for path in (SOURCES / package).rglob("*.py")
               if "__pycache__" not in path.parts]
    assert int(done.stdout.split()[1]) == len(on_disk) >= 25, done.stdout  # every module was imported


# Stand-ins for what only the Slicer desktop has. The real `slicer` package (slicer-core: the MRML classes,
# slicer.util) stays; qt is an empty module, so that any use of Qt while the module file loads fails loudly.
IMPORT_MODULE_FILE = """
    import sys, types, typing

    import slicer
    import vtk

    qt = types.ModuleType("qt", "stand-in for PythonQt: empty")
    scripted = types.ModuleType("slicer.ScriptedLoadableModule", "stand-in: plain base classes")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleWidget:
        pass

    class ScriptedLoadableModuleTest:
        pass

    for base in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                 ScriptedLoadableModuleTest):
        setattr(scripted, base.__name__, base)

    wrapper = types.ModuleType("slicer.parameterNodeWrapper", "stand-in: the decorator returns the class")

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    wrapper.WithinRange = WithinRange
    wrapper.parameterNodeWrapper = lambda cls: cls
    i18n = types.ModuleType("slicer.i18n", "stand-in: no translations")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules.update({"qt": qt, scripted.__name__: scripted, wrapper.__name__: wrapper, i18n.__name__: i18n})
    slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper, slicer.i18n = scripted, wrapper, i18n
    slicer.mrmlScene = slicer.vtkMRMLScene()  # the application's scene in Slicer

    import MetaRegistration as module

    assert module.__file__ == sys.argv[1], module.__file__
    assert issubclass(module.MetaRegistrationWidget, ScriptedLoadableModuleWidget)
    assert issubclass(module.MetaRegistrationTest, ScriptedLoadableModuleTest)

    # Slicer's parameterNodeWrapper evaluates these annotations when the class is decorated
    hints = typing.get_type_hints(module.MetaRegistrationParameterNode, include_extras=True)
    nodes = {name: hint for name, hint in hints.items() if isinstance(hint, type) and issubclass(hint, vtk.vtkObject)}
    assert nodes and all(hint.__module__.startswith("slicer_core") for hint in nodes.values()), nodes
    ranged = [name for name, hint in hints.items() if typing.get_origin(hint) is typing.Annotated]
    assert ranged and all(isinstance(typing.get_args(hints[name])[1], WithinRange) for name in ranged), hints

    parent = types.SimpleNamespace()
    module.MetaRegistration(parent)
    assert parent.title == "MetaRegistration" and parent.categories == ["Registration"], vars(parent)
    logic = module.MetaRegistrationLogic()
    assert logic.scene is slicer.mrmlScene
    print(f"MetaRegistration.py imported; parameter node: {len(hints)} fields, {len(nodes)} MRML nodes")
"""


def test_module_file_imports_with_stand_ins_for_the_desktop(slicer_python):
    done = run_in(slicer_python, IMPORT_MODULE_FILE, str(SOURCES / "MetaRegistration.py"))
    check(done, "importing MetaRegistration.py")
    assert "MetaRegistration.py imported" in done.stdout


@pytest.mark.slow
def test_suite_selection_passes_under_slicer_python(slicer_python):
    if sys.version_info[:2] == SLICER_PYTHON:
        pytest.skip("the whole suite runs under Python 3.12 already")
    tests = [REPO / "Testing" / name for name in INNER_TESTS]
    missing = [str(t.relative_to(REPO)) for t in tests if not t.is_file()]
    assert not missing, f"{missing} are gone: update INNER_TESTS in {Path(__file__).name}"
    done = run_in(slicer_python, "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
                  "-q", "-p", "no:cacheprovider", "-W", "error::SyntaxWarning", *map(str, tests),
                  *[f"--deselect=Testing/{test}" for test in INNER_DESELECT], timeout=1500,
                  # one torch thread: on 2 cores shared with another busy process, torch's default of one thread a
                  # core made this run 4x slower (218 s against 53 s, seen here); the tests pass either way
                  OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    tail = "\n".join(done.stdout.splitlines()[-40:])
    if done.returncode != 0:
        pytest.fail(f"pytest under Python {'.'.join(map(str, SLICER_PYTHON))} failed (exit status "
                    f"{done.returncode}):\n{tail}\n{done.stderr[-4000:]}", pytrace=False)
