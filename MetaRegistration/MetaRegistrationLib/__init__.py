"""MRML glue of the MetaRegistration module: everything between Slicer's scene and the ``metareg`` engine.

Runs in desktop Slicer and in ``slicer-core`` alike: it uses ``slicer.vtkMRML*``, ``slicer.util`` and vtk, never qt,
ctk or ``slicer.app``. Torch is imported only when a registration runs, so the module's panel can open (and offer to
install torch) before torch is present.

- :mod:`.convert`: volume nodes ↔ SimpleITK images, markups ↔ landmarks, segmentations → label maps, field → grid
  transform node (all geometry exact, LPS ↔ RAS handled here and nowhere else in the module).
- :mod:`.outputs`: the output nodes of a run (warped volume, transform, checkerboard, Jacobian, tables, plot).
- :mod:`.views`: slice-view layers for each visual check (overlay, checkerboard, Jacobian, landmarks).
- :mod:`.jobs`: engine work in a child process (``python -m metareg.app.worker``), polled without blocking; cancel,
  crash and exit handling.
- :mod:`.logic`: runs a registration in the engine's process with progress and cancel; applies results on success
  only.
- :mod:`.finetune`: adapt a model to my images: fine-tune on scene volumes or a pairs CSV in the engine's process,
  saving the new model and its card into the user's model folder.
- :mod:`.panel`: the panel's combo boxes without qt (kept in step with the parameter node; card defaults on a pick).
- :mod:`.selftest`: the self-test body shared by Slicer's ScriptedLoadableModuleTest and pytest.
- :mod:`.dependencies`: which Python packages the engine needs and which are missing.
- :mod:`.sampledata`: the sample data and the module's resources, loaded through MRML storage nodes.
- :mod:`.headless`: slicer-core's scene and offscreen slice views (tests, screenshots; unused in desktop Slicer).
"""

import importlib.util as _importlib_util
import logging as _logging
import sys as _sys
from pathlib import Path as _Path

#: The engine this module ships: ``metareg/`` beside this package's folder.
BUNDLED_ENGINE = _Path(__file__).resolve().parent.parent / "metareg"


def _use_bundled_engine():
    """Make ``import metareg`` give the engine beside this module, whatever else is installed.

    Slicer appends each module folder to ``sys.path``, so a ``metareg`` pip-installed into Slicer's Python would win
    over the bundled one. The bundled package is loaded by its path instead (``sys.path`` is not changed); the engine
    process gets it first on ``PYTHONPATH`` (:mod:`.jobs`). Returns the package; logs its version and folder.
    """
    loaded = _sys.modules.get("metareg")
    if loaded is not None and _Path(getattr(loaded, "__file__", "") or "").resolve().parent == BUNDLED_ENGINE:
        return loaded
    if loaded is not None:  # another metareg was imported first: drop it and its submodules
        for name in [name for name in _sys.modules if name == "metareg" or name.startswith("metareg.")]:
            del _sys.modules[name]
    spec = _importlib_util.spec_from_file_location("metareg", BUNDLED_ENGINE / "__init__.py",
                                                   submodule_search_locations=[str(BUNDLED_ENGINE)])
    package = _importlib_util.module_from_spec(spec)
    _sys.modules["metareg"] = package
    spec.loader.exec_module(package)
    _logging.getLogger("MetaRegistration").info("MetaRegistration: engine metareg %s from %s", package.__version__,
                                                BUNDLED_ENGINE)
    return package


if BUNDLED_ENGINE.is_dir():
    _use_bundled_engine()
