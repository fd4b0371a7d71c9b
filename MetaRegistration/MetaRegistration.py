"""MetaRegistration: the 3D Slicer module (Module, Widget, Logic facade, Test). Needs Slicer 5.10 or later.

The Widget only binds the panel (Resources/UI/MetaRegistration.ui) to a parameter node and calls the Logic. All the
work — reading the nodes, running the engine in a child process, making the output nodes, setting up the views —
lives in MetaRegistrationLib, which runs in desktop Slicer and in slicer-core alike and is tested there with pytest.

Slicer instantiates the module class at start-up: nothing here imports numpy, SimpleITK, torch or the engine until
the module's panel is opened or its Logic used.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: The oldest Slicer this module runs in (Python 3.12; parameterNodeWrapper.connectGui returns its tag from 5.10 on).
MINIMUM_SLICER_VERSION = (5, 10)
MODEL_FOLDER_SETTING = "MetaRegistration/UserModelFolder"
ITERATIVE = "iterative"  # MetaRegistrationLib.logic.ITERATIVE, without importing the Lib at start-up
MODULE_DIR = os.path.dirname(os.path.abspath(__file__))


def slicerVersionProblem() -> str:
    """A message when this Slicer is older than :data:`MINIMUM_SLICER_VERSION` ("" when it is supported)."""
    app = getattr(slicer, "app", None)
    version = (int(getattr(app, "majorVersion", 0) or 0), int(getattr(app, "minorVersion", 0) or 0))
    if app is None or version >= MINIMUM_SLICER_VERSION:
        return ""
    wanted = ".".join(str(part) for part in MINIMUM_SLICER_VERSION)
    return _("MetaRegistration needs 3D Slicer {wanted} or later; this is Slicer {have}. Install a newer Slicer from "
             "download.slicer.org.").format(wanted=wanted, have=f"{version[0]}.{version[1]}")


def stopEngineProcesses() -> None:
    """End every engine process still running (Slicer is quitting). Only if the Lib was ever loaded."""
    jobs = sys.modules.get("MetaRegistrationLib.jobs")
    if jobs is not None:
        jobs.stop_all()


#
# MetaRegistration
#


class MetaRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MetaRegistration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = ["Markups", "Segmentations", "Plots", "SubjectHierarchy"]
        self.parent.contributors = ["MetaRegistration developers (MetaRegistration project)"]
        self.parent.helpText = _("""
Deformable registration of a moving volume (3D, or a single 2D slice) to a fixed volume with deep networks that adapt
to your images in seconds (test-time adaptation), or with a classical iterative method that needs no network.
<p>Outputs (new nodes, the inputs are never changed): the registered volume, a grid transform under which the moving
volume, its landmarks and its segmentation line up with the fixed volume, a checkerboard, the Jacobian determinant
(blue: compression, red: expansion; folding in the results line), landmark TRE and segment Dice tables, and the loss
curve. Buttons set the slice views up for each check. Moving a landmark afterwards updates its TRE.</p>
<p>The engine runs in a separate process, so Slicer stays responsive and Cancel stops it at once.</p>
<p>See the <a href="https://github.com/metaregistration/SlicerMetaRegistration">documentation</a>.</p>
""")
        problem = slicerVersionProblem()
        if problem:
            self.parent.helpText = f"<p><b>{problem}</b></p>" + self.parent.helpText
            logging.error(problem)
        self.parent.acknowledgementText = _("""
The methods follow these papers:
<ul>
<li>Z.M.C. Baum, Y. Hu, D.C. Barratt, "Meta-Registration: Learning Test-Time Optimization for Single-Pair Image
Registration", ASMUS 2022.</li>
<li>Park et al., "A Meta-Learning Approach for Medical Image Registration", ISBI 2022.</li>
<li>G. Balakrishnan, A. Zhao, M.R. Sabuncu, J. Guttag, A.V. Dalca, "VoxelMorph: A Learning Framework for Deformable
Medical Image Registration", IEEE TMI 38(8), 2019.</li>
<li>Y. Hu et al., "Weakly-supervised convolutional neural networks for multimodal image registration" (LocalNet),
Medical Image Analysis 49, 2018.</li>
</ul>
Sample data: the MNI ICBM 2009c template (Fonov et al. 2009, 2011) and the AFIDs landmarks.
""")
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "connect"):
            app.connect("startupCompleted()", registerSampleData)
            app.connect("aboutToQuit()", stopEngineProcesses)


def registerSampleData() -> None:
    """The brain3d pair (T1 fixed, T1 and T2 moving, with landmarks) in the Sample Data module, loaded from the files
    shipped beside the module (nothing is downloaded)."""
    try:
        import SampleData
    except ImportError:
        return

    def load(source):
        from MetaRegistrationLib import sampledata

        return sampledata.load_brain3d(slicer.mrmlScene)

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MetaRegistration", sampleName="MetaRegistrationBrain3D",
        thumbnailFileName=os.path.join(MODULE_DIR, "Resources", "Icons", "MetaRegistration.png"),
        uris=[], fileNames=[], nodeNames=[], customDownloader=load)


#
# Parameter node: the panel's state, saved with the scene
#


@parameterNodeWrapper
class MetaRegistrationParameterNode:
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    fixedSegmentation: vtkMRMLSegmentationNode
    movingSegmentation: vtkMRMLSegmentationNode
    model: str = ITERATIVE
    adaptSteps: Annotated[int, WithinRange(0, 500)] = 0
    refineSteps: Annotated[int, WithinRange(0, 1000)] = 0
    affine: bool = False
    diffeomorphic: bool = False
    device: str = "auto"
    checkerboardSquares: Annotated[int, WithinRange(2, 64)] = 8
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    finetuneSteps: Annotated[int, WithinRange(1, 10000)] = 200
    outputTransform: vtkMRMLGridTransformNode


#
# MetaRegistrationWidget
#


class MetaRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._finetuneJob = None
        self._landmarkWatcher = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        problem = slicerVersionProblem()
        if problem:
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        from MetaRegistrationLib import finetune, outputs

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MetaRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # only MetaRegistration's own output transforms (they carry the run's report), never any grid transform
        self.ui.outputTransformSelector.addAttribute("vtkMRMLGridTransformNode", outputs.REPORT_ATTRIBUTE)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MetaRegistrationLogic()
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPoll)
        self._finetuneTimer = qt.QTimer()
        self._finetuneTimer.setInterval(200)
        self._finetuneTimer.connect("timeout()", self.onFinetunePoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModelFile)
        # activated(int) is the user's pick only; setCurrentIndex from code (re-syncing the combos from the parameter
        # node) must not overwrite the saved affine / refinement steps with a card's defaults
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.deviceComboBox.connect("activated(int)", self.onDeviceActivated)
        self.ui.overlayButton.connect("clicked(bool)", lambda: self.onShowCheck("overlay"))
        self.ui.checkerboardButton.connect("clicked(bool)", lambda: self.onShowCheck("checkerboard"))
        self.ui.jacobianButton.connect("clicked(bool)", lambda: self.onShowCheck("jacobian"))
        self.ui.landmarksButton.connect("clicked(bool)", lambda: self.onShowCheck("landmarks"))
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.checkerboardSquaresSpinBox.connect("valueChanged(int)", self.onCheckerboardSquaresChanged)
        self.ui.lossPlotButton.connect("clicked(bool)", self.onShowLossPlot)
        self.ui.placeUnderTransformButton.connect("clicked(bool)", self.onPlaceUnderTransform)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetuneButton)
        self.ui.modelFolderPathLineEdit.currentPath = str(qt.QSettings().value(
            MODEL_FOLDER_SETTING, str(finetune.default_user_model_dir())))
        self.ui.modelFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelFolderChanged)

        self.fillChoices()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """The module is unloaded (Slicer quits, or Reload): no engine process survives it."""
        for job in (self._job, self._finetuneJob):
            if job is not None and not job.done:
                job.stop()
        self._job = self._finetuneJob = None
        self.stopLandmarkWatcher()
        if self.ui is not None:
            self._pollTimer.stop()
            self._finetuneTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        if self.ui is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None, keep=True)

    def onSceneStartClose(self, caller, event) -> None:
        # a registration's inputs and outputs belong to the scene that closes: stop it; fine-tuning reads only copies
        # and goes on
        if self._job is not None and not self._job.done:
            self._job.stop()
            self._pollTimer.stop()
            self._job = None
            self.ui.statusLabel.text = _("Cancelled: the scene was closed.")
        self.stopLandmarkWatcher()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --- parameter node -------------------------------------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(MetaRegistrationParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, parameterNode, keep: bool = False) -> None:
        """Bind the panel to ``parameterNode`` (None: unbind; ``keep``: remember the node, as on module exit)."""
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        if not keep:
            self._parameterNode = parameterNode
        if parameterNode:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """The combos the wrapper cannot bind (their items change) follow the parameter node, e.g. after a scene
        load; then the buttons."""
        if self.ui is None:
            return
        from MetaRegistrationLib import panel

        if self._parameterNode:
            panel.select_choice(self.ui.modelComboBox, self._parameterNode.model)
            panel.select_choice(self.ui.deviceComboBox, self._parameterNode.device)
        self.updateButtons()

    def fillChoices(self) -> None:
        """Models of the zoo and the user's folder, and the devices this computer has (torch may not be installed)."""
        from MetaRegistrationLib import logic as registration
        from MetaRegistrationLib import panel

        try:
            modelChoices = registration.model_choices(user_model_dir=self.ui.modelFolderPathLineEdit.currentPath)
        except Exception as error:  # torch missing: only the iterative method can be listed; Apply installs torch
            logging.info(f"MetaRegistration: model zoo not listed yet ({error})")
            modelChoices = [registration.Choice(_("iterative (no network)"), registration.ITERATIVE)]
        panel.fill_choices(self.ui.modelComboBox, modelChoices, qt.Qt.ToolTipRole)
        panel.fill_choices(self.ui.deviceComboBox, registration.device_choices(), qt.Qt.ToolTipRole)
        self.updateGUIFromParameterNode()

    def onModelActivated(self, index) -> None:
        """The user picked a model: it takes what its card asks for (affine pre-alignment, refinement steps)."""
        with slicer.util.tryWithErrorDisplay(_("Cannot use this model."), waitCursor=True):
            from MetaRegistrationLib import panel

            if self._parameterNode and index >= 0:
                panel.pick_model(self._parameterNode, self.ui.modelComboBox.itemData(index))

    def onDeviceActivated(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onLoadModelFile(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot use this model file."), waitCursor=True):
            from MetaRegistrationLib import panel

            path = qt.QFileDialog.getOpenFileName(self.parent, _("Load a MetaRegistration model"), "",
                                                  _("Model weights (*.safetensors)"))
            if path and self._parameterNode:
                panel.pick_model(self._parameterNode, path)

    def updateButtons(self) -> None:
        running = self._job is not None and not self._job.done
        p = self._parameterNode
        ready = bool(p and p.fixedVolume and p.movingVolume)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = (_("Stop the registration; the scene stays as it was") if running else
                                       _("Register the moving volume to the fixed volume") if ready else
                                       _("Select a fixed and a moving volume"))
        network = bool(p and p.model != ITERATIVE)
        self.ui.adaptStepsSpinBox.enabled = network
        self.ui.refineStepsSpinBox.enabled = network
        self.ui.diffeomorphicCheckBox.enabled = not network
        hasOutputs = bool(p and p.outputTransform)
        adapting = self._finetuneJob is not None and not self._finetuneJob.done
        self.ui.finetuneButton.text = _("Cancel adapting") if adapting else _("Start adapting")
        self.ui.finetuneButton.enabled = adapting or network
        for button in (self.ui.overlayButton, self.ui.checkerboardButton, self.ui.jacobianButton,
                       self.ui.landmarksButton, self.ui.lossPlotButton, self.ui.placeUnderTransformButton):
            button.enabled = hasOutputs and not running

    # --- running ----------------------------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self._job is not None and not self._job.done:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling…")
            return
        with slicer.util.tryWithErrorDisplay(_("MetaRegistration could not start."), waitCursor=True):
            from MetaRegistrationLib import convert, dependencies
            from MetaRegistrationLib import logic as registration

            if not dependencies.ensure_installed():
                return
            p = self._parameterNode
            inputs = registration.RegistrationInputs(p.fixedVolume, p.movingVolume, p.fixedLandmarks,
                                                     p.movingLandmarks, p.fixedSegmentation, p.movingSegmentation)
            settings = registration.RegistrationSettings(model=p.model, adapt_steps=p.adaptSteps,
                                                         refine_steps=p.refineSteps, affine=p.affine,
                                                         diffeomorphic=p.diffeomorphic, device=p.device,
                                                         checkerboard_squares=p.checkerboardSquares)
            try:
                self._job = self.logic.start(inputs, settings)
            except convert.NodeInputError as error:
                slicer.util.errorDisplay(str(error), windowTitle=_("MetaRegistration: check the inputs"))
                return
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the engine…")
            self._pollTimer.start()
            self.updateButtons()

    def onPoll(self) -> None:
        if self._job is None:
            self._pollTimer.stop()
            return
        fraction, message = self._job.progress
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = f"%p %  {message}"
        if not self._job.done:
            return
        self._pollTimer.stop()
        job, self._job = self._job, None
        try:
            result = self.logic.finish(job)
        except Exception as error:
            self.ui.statusLabel.text = _("Failed; nothing was added to the scene.")
            slicer.util.errorDisplay(_("The registration failed: {error}").format(error=error),
                                     windowTitle="MetaRegistration", detailedText=job.error_details or None)
            result = None
        else:
            self.ui.statusLabel.text = result.results_line if result else _("Cancelled; the scene is unchanged.")
        if result is not None:
            self._parameterNode.outputTransform = result.transform
            self.startLandmarkWatcher(result)
            if self.parent.isEntered:  # never switch the layout under a user who is working in another module
                self.onShowCheck("overlay")
        self.updateButtons()

    # --- landmark evaluation in the viewer ---------------------------------------------------------------------------

    def startLandmarkWatcher(self, result) -> None:
        """Moving a landmark, or adding a fixed/moving pair with the same label, updates the run's TRE table."""
        self.stopLandmarkWatcher()
        p = self._parameterNode
        if result.tre_table is None or not (p.fixedLandmarks and p.movingLandmarks):
            return
        from MetaRegistrationLib import landmarkwatch

        def showResults(evaluation):
            self.ui.statusLabel.text = evaluation.results_line(result.report)

        self._landmarkWatcher = landmarkwatch.LandmarkWatcher(result, p.fixedLandmarks, p.movingLandmarks,
                                                              on_update=showResults)

    def stopLandmarkWatcher(self) -> None:
        if self._landmarkWatcher is not None:
            self._landmarkWatcher.stop()
            self._landmarkWatcher = None

    # --- adapt the model to my images -------------------------------------------------------------------------------

    def onModelFolderChanged(self, path) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot list the models of this folder.")):
            qt.QSettings().setValue(MODEL_FOLDER_SETTING, path)
            self.fillChoices()

    def onFinetuneButton(self) -> None:
        if self._finetuneJob is not None and not self._finetuneJob.done:
            self._finetuneJob.cancel()
            self.ui.finetuneProgressBar.format = _("Cancelling…")
            return
        with slicer.util.tryWithErrorDisplay(_("Adapting the model could not start."), waitCursor=True):
            from MetaRegistrationLib import convert, dependencies, finetune

            if not dependencies.ensure_installed():
                return
            p = self._parameterNode
            inputs = finetune.FinetuneInputs(p.fixedVolume, list(self.ui.finetuneVolumesSelector.checkedNodes()),
                                             self.ui.finetunePairsPathLineEdit.currentPath or None)
            settings = finetune.FinetuneSettings(parent=p.model, steps=p.finetuneSteps, device=p.device,
                                                 model_dir=self.ui.modelFolderPathLineEdit.currentPath or None)
            try:
                self._finetuneJob = self.logic.start_finetune(inputs, settings)
            except convert.NodeInputError as error:
                slicer.util.errorDisplay(str(error), windowTitle=_("MetaRegistration: adapt the model"))
                return
            self.ui.finetuneProgressBar.value = 0
            self._finetuneTimer.start()
            self.updateButtons()

    def onFinetunePoll(self) -> None:
        if self._finetuneJob is None:
            self._finetuneTimer.stop()
            return
        fraction, message = self._finetuneJob.progress
        self.ui.finetuneProgressBar.value = int(round(100 * fraction))
        self.ui.finetuneProgressBar.format = f"%p %  {message}"
        if not self._finetuneJob.done:
            return
        self._finetuneTimer.stop()
        job, self._finetuneJob = self._finetuneJob, None
        try:
            path = self.logic.finish_finetune(job)
        except Exception as error:
            self.ui.finetuneProgressBar.format = _("Failed; no model was saved.")
            slicer.util.errorDisplay(_("Adapting the model failed: {error}").format(error=error),
                                     windowTitle="MetaRegistration", detailedText=job.error_details or None)
            path = None
        else:
            self.ui.finetuneProgressBar.format = (_("Saved {path}").format(path=path) if path else
                                                  _("Cancelled; no model was saved."))
        if path is not None:
            self.fillChoices()
            if self._parameterNode:
                self._parameterNode.model = str(path)
        self.updateButtons()

    # --- views ------------------------------------------------------------------------------------------------------

    def currentOutputs(self):
        """The outputs of the selected registration and its input volumes (a clear error when they are gone)."""
        from MetaRegistrationLib import outputs

        transform = self._parameterNode.outputTransform if self._parameterNode else None
        if transform is None:
            raise ValueError(_("Select a registration (an output transform of MetaRegistration) first."))
        runOutputs = outputs.outputs_of(transform)
        fixed, moving = outputs.input_volumes_of(transform)
        if fixed is None or moving is None:
            raise ValueError(_("The fixed or moving volume of this registration was deleted."))
        return runOutputs, fixed, moving

    def onShowCheck(self, check) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot show the {check} check.").format(check=check), waitCursor=True):
            from MetaRegistrationLib import logic as registration
            from MetaRegistrationLib import views

            runOutputs, fixed, moving = self.currentOutputs()
            inputs = registration.RegistrationInputs(fixed, moving)
            # a single-slice (2D) run shows in the axial view alone: the other views would cut the slice edge-on
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
                                                 if views.is_2d(runOutputs) else
                                                 slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
            sliceLogics = slicer.app.applicationLogic().GetSliceLogics()
            views.show_check(slicer.mrmlScene, check, inputs, runOutputs, self._parameterNode.overlayOpacity,
                             [sliceLogics.GetItemAsObject(i) for i in range(sliceLogics.GetNumberOfItems())])

    def onOpacityChanged(self, value) -> None:
        from MetaRegistrationLib import views

        views.set_foreground_opacity(slicer.mrmlScene, value)

    def onCheckerboardSquaresChanged(self, squares) -> None:
        if not (self._parameterNode and self._parameterNode.outputTransform):
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot update the checkerboard.")):
            from MetaRegistrationLib import outputs

            runOutputs, fixed, _moving = self.currentOutputs()
            outputs.update_checkerboard(runOutputs, fixed, squares)

    def onShowLossPlot(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot show the loss curve.")):
            chart = self.currentOutputs()[0].loss_chart
            if chart is None:
                slicer.util.infoDisplay(_("This registration has no loss curve (a network without adaptation "
                                          "steps)."))
                return
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onPlaceUnderTransform(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot align the moving data.")):
            p = self._parameterNode
            runOutputs, _fixed, movingVolume = self.currentOutputs()  # the volume of that run, not the selection
            self.logic.place_under_transform(runOutputs.transform, [movingVolume, p.movingLandmarks,
                                                                    p.movingSegmentation])


#
# MetaRegistrationLogic
#


class MetaRegistrationLogic(ScriptedLoadableModuleLogic):
    """Slicer's logic facade: the parameter node of ScriptedLoadableModuleLogic plus
    :class:`MetaRegistrationLib.logic.MetaRegistrationLogic` (start / finish / run, fine-tuning) on
    ``slicer.mrmlScene``; the Lib is imported when the facade is made, not at Slicer's start-up."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from MetaRegistrationLib import logic as registration

        self._lib = registration.MetaRegistrationLogic(slicer.mrmlScene)

    @property
    def scene(self):
        return self._lib.scene

    def __getattr__(self, name):
        # start, finish, run, start_finetune, finish_finetune, run_finetune, place_under_transform
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._lib, name)


#
# MetaRegistrationTest
#


class MetaRegistrationTest(ScriptedLoadableModuleTest):
    """Runs MetaRegistrationLib.selftest (the same body runs in the pytest suite on slicer-core)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_registration_of_the_sample_pair_improves_tre()

    def test_registration_of_the_sample_pair_improves_tre(self):
        from MetaRegistrationLib import dependencies, selftest

        self.delayDisplay("Installing what the engine needs (if missing)")
        # the panel's own call; in testing mode slicer.util.confirmOkCancelDisplay answers yes, so a clean build or
        # the extensions factory installs torch (PyTorch extension) and safetensors unattended
        self.assertTrue(dependencies.ensure_installed(), "the engine's Python packages are not usable yet")
        self.delayDisplay("Registering the brain3d sample pair")
        selftest.run_self_test(slicer.mrmlScene, log=self.delayDisplay)
        self.delayDisplay("Test passed")
