"""The Slicer module file and its panel, checked without the Slicer desktop (which has qt; slicer-core has not).

- Resources/UI/MetaRegistration.ui is valid Qt Designer XML and holds every widget the Widget looks up.
- Every widget bound to the parameter node names a field of the parameter node class.
- Everything the Widget calls in MetaRegistrationLib exists (the Widget holds no logic of its own).
- The module CMakeLists registers the self-test with ctest.
"""

import ast
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "MetaRegistration" / "MetaRegistration.py"
UI = REPO / "Resources" / "UI" / "MetaRegistration.ui"
sys.path.insert(0, str(REPO / "MetaRegistration"))

import MetaRegistrationLib.logic  # noqa: E402
from MetaRegistrationLib import convert, dependencies, finetune, outputs, sampledata, selftest, views  # noqa: E402

QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QSpinBox", "QCheckBox", "QProgressBar",
              "QFormLayout", "QVBoxLayout", "QHBoxLayout"}
#: Parameter-node fields the Widget sets itself (combo boxes whose items carry values), not through the .ui.
BOUND_IN_CODE = {"model", "device"}


@pytest.fixture(scope="module")
def ui_tree():
    return ElementTree.parse(UI)


@pytest.fixture(scope="module")
def module_ast():
    return ast.parse(MODULE.read_text(encoding="utf-8"))


def widget_names(tree) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}


def attributes_of(tree, owner: str) -> set[str]:
    """Names ``X`` used as ``self.<owner>.X`` in the module."""
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == owner and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}


def test_ui_is_valid_qt_designer_xml(ui_tree):
    root = ui_tree.getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.find("class").text == "MetaRegistration"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "MetaRegistration"
    names = [w.get("name") for w in ui_tree.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    declared = {c.find("class").text for c in root.find("customwidgets")}
    for widget in ui_tree.iter("widget"):
        assert widget.get("class") in QT_CLASSES | declared, widget.get("class")
    for layout in ui_tree.iter("layout"):
        assert layout.get("class") in QT_CLASSES
    # every MRML node selector gets the scene from the top widget
    selectors = {w.get("name") for w in ui_tree.iter("widget")
                 if w.get("class") in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")}
    receivers = {c.find("receiver").text for c in root.find("connections")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert selectors and selectors == receivers


def test_every_widget_the_widget_looks_up_exists_in_the_ui(ui_tree, module_ast):
    used = attributes_of(module_ast, "ui")
    assert {"applyButton", "progressBar", "statusLabel", "modelComboBox"} <= used
    missing = used - set(widget_names(ui_tree))
    assert not missing, f"the Widget uses widgets the .ui lacks: {sorted(missing)}"


def parameter_fields(module_ast) -> set[str]:
    cls = next(node for node in module_ast.body
               if isinstance(node, ast.ClassDef) and node.name == "MetaRegistrationParameterNode")
    return {item.target.id for item in cls.body if isinstance(item, ast.AnnAssign)}


def test_widgets_bound_to_the_parameter_node_name_its_fields(ui_tree, module_ast):
    fields = parameter_fields(module_ast)
    bound = {}
    for widget in ui_tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("name")
    assert set(bound) <= fields, sorted(set(bound) - fields)
    assert fields - set(bound) == BOUND_IN_CODE


def test_everything_the_widget_calls_in_the_library_exists(module_ast):
    libraries = {"registration": MetaRegistrationLib.logic, "convert": convert, "dependencies": dependencies,
                 "finetune": finetune, "outputs": outputs, "sampledata": sampledata, "selftest": selftest, "views": views}
    for node in ast.walk(module_ast):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in libraries:
            assert hasattr(libraries[node.value.id], node.attr), f"{node.value.id}.{node.attr} does not exist"
    logic_calls = attributes_of(module_ast, "logic") - {"getParameterNode"}
    assert logic_calls == {"start", "finish", "start_finetune", "finish_finetune", "place_under_transform"}
    assert all(hasattr(MetaRegistrationLib.logic.MetaRegistrationLogic, name) for name in logic_calls)


def test_module_has_title_category_help_and_acknowledgement(module_ast):
    source = MODULE.read_text(encoding="utf-8")
    assert 'self.parent.title = "MetaRegistration"' in source
    assert 'self.parent.categories = ["Registration"]' in source
    for paper in ("Meta-Registration: Learning Test-Time Optimization", "A Meta-Learning Approach for Medical Image",
                  "VoxelMorph"):
        assert paper in source
    classes = {node.name for node in module_ast.body if isinstance(node, ast.ClassDef)}
    assert {"MetaRegistration", "MetaRegistrationWidget", "MetaRegistrationLogic", "MetaRegistrationTest"} <= classes


def test_cmake_registers_the_self_test_with_ctest():
    cmake = (REPO / "MetaRegistration" / "CMakeLists.txt").read_text()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    assert "slicerMacroBuildScriptedModule" in cmake


def test_dependencies_never_install_slicers_own_packages():
    assert {r.module for r in dependencies.REQUIREMENTS if r.provider == "slicer"} == {"numpy", "SimpleITK"}
    assert all(r.provider != "pip" or r.module not in ("numpy", "SimpleITK", "torch")
               for r in dependencies.REQUIREMENTS)
    fake = (dependencies.Requirement("surely_not_installed_module_xyz", "xyz>=1", "pip"),
            dependencies.Requirement("numpy", "numpy", "slicer"))
    assert dependencies.pip_requirements(fake) == ["xyz>=1"]
    assert "surely_not_installed_module_xyz" in dependencies.install_message(fake)
    assert dependencies.install_message(fake[1:]) == ""


def test_module_file_imports_and_its_logic_facade_works_on_slicer_core(monkeypatch):
    """Import MetaRegistration.py with stand-ins for what only desktop Slicer has (qt, ScriptedLoadableModule,
    parameterNodeWrapper); its Logic facade then registers through MetaRegistrationLib on a real scene."""
    import types

    from MetaRegistrationLib import headless

    scene = headless.get_app().scene

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (Base,), {}))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.WithinRange = lambda low, high: (low, high)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    import slicer.util

    if not hasattr(slicer.util, "VTKObservationMixin"):
        monkeypatch.setattr(slicer.util, "VTKObservationMixin", Base, raising=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location("MetaRegistration", MODULE)
    MetaRegistration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(MetaRegistration)

    assert MetaRegistration.MetaRegistrationParameterNode.model == "iterative"
    logic = MetaRegistration.MetaRegistrationLogic()
    assert logic.scene is scene
    assert callable(logic.start) and callable(logic.finish)


def test_picking_a_model_takes_the_defaults_its_card_asks_for():
    """The panel ticks affine pre-alignment and fills the refinement steps from the picked model's card."""
    logic = MetaRegistrationLib.logic
    brain = logic.card_defaults("brain-mr-3d-reptile")
    assert brain.affine and brain.refine_steps == 30
    assert logic.card_defaults("multidomain-2d-reptile") == logic.CardDefaults(affine=False, refine_steps=200)
    assert logic.card_defaults(logic.ITERATIVE) == logic.CardDefaults()
    assert logic.card_defaults("no-such-model") == logic.CardDefaults()  # the clear error comes when it is loaded
