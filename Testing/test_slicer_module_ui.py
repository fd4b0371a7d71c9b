"""The Slicer module file and its panel, checked without the Slicer desktop (which has qt; slicer-core has not).

- MetaRegistration/Resources/UI/MetaRegistration.ui is valid Qt Designer XML and holds every widget the Widget
  looks up.
- Every widget bound to the parameter node names a field of the parameter node class.
- Everything the Widget calls in MetaRegistrationLib exists (the Widget holds no logic of its own).
- The module CMakeLists registers the self-test with ctest.
"""

import ast
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

import MetaRegistrationLib.logic
from MetaRegistrationLib import (
    convert,
    dependencies,
    finetune,
    landmarkwatch,
    outputs,
    panel,
    sampledata,
    selftest,
    views,
)

pytestmark = pytest.mark.slicer

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "MetaRegistration" / "MetaRegistration.py"
UI = REPO / "MetaRegistration" / "Resources" / "UI" / "MetaRegistration.ui"

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
                 "finetune": finetune, "outputs": outputs, "sampledata": sampledata, "selftest": selftest, "views": views,
                 "panel": panel, "landmarkwatch": landmarkwatch}
    for node in ast.walk(module_ast):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in libraries:
            assert hasattr(libraries[node.value.id], node.attr), f"{node.value.id}.{node.attr} does not exist"
    logic_calls = attributes_of(module_ast, "logic") - {"getParameterNode"}
    assert logic_calls == {"start", "finish", "start_finetune", "finish_finetune", "place_under_transform"}
    assert all(hasattr(MetaRegistrationLib.logic.MetaRegistrationLogic, name) for name in logic_calls)


def test_module_has_title_category_help_and_acknowledgement(module_ast):
    source = MODULE.read_text(encoding="utf-8")
    assert 'self.parent.title = _("MetaRegistration")' in source
    assert 'self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]' in source
    assert 'self.parent.dependencies = ["Markups", "Segmentations", "Plots", "SubjectHierarchy"]' in source
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


def import_module_file(monkeypatch, app=None):
    """Import MetaRegistration.py with stand-ins for what only desktop Slicer has (qt, slicer.i18n,
    ScriptedLoadableModule, parameterNodeWrapper); ``app`` stands in for ``slicer.app``."""
    import importlib.util
    import types

    import slicer
    import slicer.util

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
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    if not hasattr(slicer.util, "VTKObservationMixin"):
        monkeypatch.setattr(slicer.util, "VTKObservationMixin", Base, raising=False)
    if app is not None:
        monkeypatch.setattr(slicer, "app", app, raising=False)
    spec = importlib.util.spec_from_file_location("MetaRegistration", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_file_imports_and_its_logic_facade_works_on_slicer_core(monkeypatch):
    """Its Logic facade then reaches MetaRegistrationLib's Logic on a real scene."""
    from MetaRegistrationLib import headless

    scene = headless.get_app().scene
    MetaRegistration = import_module_file(monkeypatch)
    assert MetaRegistration.MetaRegistrationParameterNode.model == "iterative" == MetaRegistrationLib.logic.ITERATIVE
    logic = MetaRegistration.MetaRegistrationLogic()
    assert logic.scene is scene
    assert callable(logic.start) and callable(logic.finish) and callable(logic.run_finetune)


class FakeApp:
    """``slicer.app`` as far as the module class uses it: the version and ``connect``."""

    def __init__(self, major, minor):
        self.majorVersion, self.minorVersion = major, minor
        self.connected = {}

    def connect(self, signal, slot):
        self.connected[signal] = slot


class FakeParent:
    """The module's ``parent`` (qSlicerScriptedLoadableModule): plain attributes."""


def test_the_module_refuses_slicer_older_than_5_10_with_a_clear_message(monkeypatch):
    old = import_module_file(monkeypatch, FakeApp(5, 8))
    assert "needs 3D Slicer 5.10 or later; this is Slicer 5.8" in old.slicerVersionProblem()
    module = old.MetaRegistration.__new__(old.MetaRegistration)
    module.parent = FakeParent()
    old.MetaRegistration.__init__(module, module.parent)
    assert "needs 3D Slicer 5.10 or later" in module.parent.helpText  # the module's help says so at load
    new = import_module_file(monkeypatch, FakeApp(5, 10))
    assert new.slicerVersionProblem() == ""
    assert import_module_file(monkeypatch, FakeApp(6, 0)).slicerVersionProblem() == ""


def test_the_module_class_registers_sample_data_and_stops_the_engine_at_exit(monkeypatch):
    app = FakeApp(5, 10)
    MetaRegistration = import_module_file(monkeypatch, app)

    module = MetaRegistration.MetaRegistration.__new__(MetaRegistration.MetaRegistration)
    module.parent = FakeParent()
    MetaRegistration.MetaRegistration.__init__(module, module.parent)
    assert app.connected["startupCompleted()"] is MetaRegistration.registerSampleData
    assert app.connected["aboutToQuit()"] is MetaRegistration.stopEngineProcesses
    assert module.parent.dependencies == ["Markups", "Segmentations", "Plots", "SubjectHierarchy"]
    assert module.parent.contributors == ["MetaRegistration developers (MetaRegistration project)"]


def test_slicer_start_up_imports_neither_numpy_nor_simpleitk_nor_the_engine():
    """Slicer instantiates every module class at start-up: importing the module file must stay light."""
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import sys, types, importlib.util
        import slicer, slicer.util
        class Base:
            def __init__(self, *a, **k): pass
        for name, attrs in {{"qt": {{}}, "slicer.i18n": {{"tr": lambda t: t, "translate": lambda c, t: t}},
                             "slicer.parameterNodeWrapper": {{"parameterNodeWrapper": lambda c: c,
                                                              "WithinRange": lambda a, b: None}},
                             "slicer.ScriptedLoadableModule": {{n: type(n, (Base,), {{}}) for n in (
                                 "ScriptedLoadableModule", "ScriptedLoadableModuleLogic",
                                 "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget")}}}}.items():
            module = types.ModuleType(name); module.__dict__.update(attrs); sys.modules[name] = module
        slicer.util.VTKObservationMixin = getattr(slicer.util, "VTKObservationMixin", Base)
        before = set(sys.modules)
        spec = importlib.util.spec_from_file_location("MetaRegistration", {str(MODULE)!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        new = set(sys.modules) - before
        heavy = sorted(n for n in new if n.split(".")[0] in ("numpy", "SimpleITK", "torch", "metareg",
                                                               "MetaRegistrationLib", "safetensors"))
        print(",".join(heavy))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing MetaRegistration.py imported {done.stdout.strip()}"


def test_the_output_selector_lists_only_metaregistration_transforms(module_ast):
    """The Registration selector is filtered to our output transforms (they carry the run's report attribute)."""
    calls = [node for node in ast.walk(module_ast) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "addAttribute"]
    assert len(calls) == 1
    call = calls[0]
    assert call.func.value.attr == "outputTransformSelector"
    assert ast.literal_eval(call.args[0]) == "vtkMRMLGridTransformNode"
    assert ast.unparse(call.args[1]) == "outputs.REPORT_ATTRIBUTE"
    assert len(call.args) == 2  # any value: the attribute only has to be there


def test_combos_take_card_defaults_only_when_the_user_picks(module_ast):
    """modelComboBox and deviceComboBox react to ``activated(int)`` (the user's pick), never to
    ``currentIndexChanged`` (which code's setCurrentIndex fires too); the parameter node's ModifiedEvent re-selects
    them through panel.select_choice."""
    connections = {}
    for node in ast.walk(module_ast):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect" \
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr.endswith("ComboBox"):
            connections.setdefault(node.func.value.attr, []).append(ast.literal_eval(node.args[0]))
    assert connections == {"modelComboBox": ["activated(int)"], "deviceComboBox": ["activated(int)"]}
    update = next(node for node in ast.walk(module_ast)
                  if isinstance(node, ast.FunctionDef) and node.name == "updateGUIFromParameterNode")
    calls = {ast.unparse(node.func) for node in ast.walk(update) if isinstance(node, ast.Call)}
    assert "panel.select_choice" in calls
    observed = [node for node in ast.walk(module_ast) if isinstance(node, ast.Call)
                and ast.unparse(node.func) == "self.addObserver" and "ModifiedEvent" in ast.unparse(node.args[1])]
    assert observed and all(ast.unparse(node.args[2]) == "self.updateGUIFromParameterNode" for node in observed)


class FakeCombo:
    """QComboBox's behaviour as the panel uses it: setCurrentIndex emits currentIndexChanged unless signals are
    blocked; activated is emitted only by the user (:meth:`user_picks`)."""

    def __init__(self):
        self.items, self.current, self.blocked, self.emitted = [], -1, False, []

    @property
    def count(self):
        return len(self.items)

    def blockSignals(self, block):
        was, self.blocked = self.blocked, block
        return was

    def clear(self):
        self.items = []
        self._set(-1)

    def addItem(self, title, value):
        self.items.append((title, value))
        if self.current < 0:
            self._set(0)

    def setItemData(self, index, value, role):
        pass

    def findData(self, value):
        return next((i for i, (_, v) in enumerate(self.items) if v == value), -1)

    def itemData(self, index):
        return self.items[index][1]

    def setCurrentIndex(self, index):
        self._set(index)

    def _set(self, index):
        if index != self.current:
            self.current = index
            if not self.blocked:
                self.emitted.append(("currentIndexChanged", index))


def test_panel_reselects_combos_from_the_parameter_node_without_signals_or_card_defaults():
    import types

    combo = FakeCombo()
    choices = MetaRegistrationLib.logic.model_choices()
    panel.fill_choices(combo, choices)
    assert combo.emitted == [] and combo.count == len(choices)
    saved = types.SimpleNamespace(model="brain-mr-3d-reptile", affine=False, refineSteps=7)  # a loaded scene's
    panel.select_choice(combo, saved.model)
    assert combo.itemData(combo.current) == "brain-mr-3d-reptile" and combo.emitted == []
    assert (saved.affine, saved.refineSteps) == (False, 7)  # the saved settings stay
    panel.select_choice(combo, "/data/my.safetensors")  # a model file loaded earlier is added
    assert combo.itemData(combo.current) == "/data/my.safetensors" and combo.emitted == []
    panel.pick_model(saved, "brain-mr-3d-reptile")  # the user's pick takes the card's defaults
    assert (saved.model, saved.affine, saved.refineSteps) == ("brain-mr-3d-reptile", True, 30)


def test_picking_a_model_takes_the_defaults_its_card_asks_for():
    """The panel ticks affine pre-alignment and fills the refinement steps from the picked model's card."""
    logic = MetaRegistrationLib.logic
    brain = logic.card_defaults("brain-mr-3d-reptile")
    assert brain.affine and brain.refine_steps == 30
    assert logic.card_defaults("multidomain-2d-reptile") == logic.CardDefaults(affine=False, refine_steps=200)
    assert logic.card_defaults(logic.ITERATIVE) == logic.CardDefaults()
    assert logic.card_defaults("no-such-model") == logic.CardDefaults()  # the clear error comes when it is loaded


def test_torch_older_than_the_minimum_is_refused_with_what_to_do():
    assert "needs 2.1 or newer" in dependencies.torch_too_old("2.0.1")
    assert "PyTorch Utils" in dependencies.torch_too_old("1.13.1+cu117")
    assert dependencies.torch_too_old("2.13.0+cpu") == dependencies.torch_too_old("2.1.0") == ""
    assert dependencies.torch_too_old() == ""  # the torch of this venv


def test_install_goes_through_the_pytorch_extension_with_the_version_requirement(monkeypatch):
    """The panel's Apply and the self-test call dependencies.ensure_installed: torch through PyTorchUtils'
    installTorch with >=MINIMUM_TORCH_VERSION (never pip), the rest with slicer.util.pip_install, numpy/SimpleITK
    never; in testing mode the confirmation answers yes, so the self-test installs unattended."""
    import types

    import slicer.util

    calls = []
    installed = set()

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return "torch_stand_in" in installed

        def installTorch(self, askConfirmation=False, torchVersionRequirement=None, **kwargs):
            calls.append(("installTorch", askConfirmation, torchVersionRequirement))
            installed.add("torch_stand_in")
            return types.ModuleType("torch")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirement: (calls.append(("pip", requirement)),
                                                                         installed.add(requirement.split(">")[0])))
    monkeypatch.setattr(dependencies, "REQUIREMENTS", (
        dependencies.Requirement("numpy", "numpy", "slicer"),
        dependencies.Requirement("torch_stand_in", "torch>=2.1", "pytorch-extension"),
        dependencies.Requirement("safetensors_stand_in", "safetensors_stand_in>=0.4", "pip")))
    monkeypatch.setattr(dependencies, "is_installed", lambda module: module == "numpy" or module in installed)
    questions = []
    assert dependencies.ensure_installed(confirm=lambda q: questions.append(q) or True, restart=lambda: None)
    assert calls == [("installTorch", False, ">=2.1"), ("pip", "safetensors_stand_in>=0.4")]
    assert len(questions) == 1 and "PyTorch extension" in questions[0]
    calls.clear()
    assert dependencies.ensure_installed(confirm=lambda q: False)  # nothing missing now: nothing asked or done
    assert calls == []
    installed.clear()
    assert not dependencies.ensure_installed(confirm=lambda q: False)  # the user declined: nothing installed
    assert calls == []
    monkeypatch.delitem(sys.modules, "PyTorchUtils")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    with pytest.raises(dependencies.InstallError, match="PyTorch extension"):
        dependencies.ensure_installed(confirm=lambda q: True)


def test_picking_a_model_before_torch_is_installed_gives_no_defaults_and_no_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "metareg.core.modelio", None)  # import fails as without torch
    assert MetaRegistrationLib.logic.card_defaults("brain-mr-3d-reptile") == MetaRegistrationLib.logic.CardDefaults()
