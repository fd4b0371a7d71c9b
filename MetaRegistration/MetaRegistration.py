"""MetaRegistration: the 3D Slicer module (Module, Widget, Logic facade, Test).

The Widget only binds the panel (Resources/UI/MetaRegistration.ui) to a parameter node and calls the Logic. All the
work — reading the nodes, running the engine in a background thread, making the output nodes, setting up the views —
lives in MetaRegistrationLib, which runs in desktop Slicer and in slicer-core alike and is tested there with pytest.
"""

from __future__ import annotations

import logging
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
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MetaRegistrationLib import convert, dependencies, finetune, outputs, sampledata, selftest, views
from MetaRegistrationLib import logic as registration

MODEL_FOLDER_SETTING = "MetaRegistration/UserModelFolder"

#
# MetaRegistration
#


class MetaRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MetaRegistration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["MetaRegistration developers"]
        self.parent.helpText = """
Deformable registration of a moving volume to a fixed volume with deep networks that adapt to your images in seconds
(test-time adaptation), or with a classical iterative method that needs no network.
<p>Outputs (new nodes, the inputs are never changed): the registered volume, a grid transform under which the moving
volume, its landmarks and its segmentation line up with the fixed volume, a checkerboard, the Jacobian determinant
(blue: compression, red: expansion; folding in the results line), landmark TRE and segment Dice tables, and the loss
curve. Buttons set the slice views up for each check.</p>
<p>See the <a href="https://github.com/metaregistration/SlicerMetaRegistration">documentation</a>.</p>
"""
        self.parent.acknowledgementText = """
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
"""


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
    model: str = registration.ITERATIVE
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
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._finetuneJob = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(sampledata.resource_path("UI", "MetaRegistration.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
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
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
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
        for job in (self._job, self._finetuneJob):
            if job is not None and not job.done:
                job.cancel()
        self._pollTimer.stop()
        self._finetuneTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        for job in (self._job, self._finetuneJob):
            if job is not None and not job.done:
                job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --- parameter node -------------------------------------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(MetaRegistrationParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.selectChoice(self.ui.modelComboBox, self._parameterNode.model)
            self.selectChoice(self.ui.deviceComboBox, self._parameterNode.device)
        self.updateButtons()

    def fillChoices(self) -> None:
        """Models of the zoo and the devices this computer has (torch may not be installed yet)."""
        try:
            modelChoices = registration.model_choices(user_model_dir=self.ui.modelFolderPathLineEdit.currentPath)
        except Exception as error:  # torch missing: only the iterative method can be listed; Apply installs torch
            logging.info(f"MetaRegistration: model zoo not listed yet ({error})")
            modelChoices = [registration.Choice("iterative (no network)", registration.ITERATIVE)]
        for combo, choices in ((self.ui.modelComboBox, modelChoices),
                               (self.ui.deviceComboBox, registration.device_choices())):
            wasBlocked = combo.blockSignals(True)  # refilling must not overwrite the parameter node's choice
            combo.clear()
            for choice in choices:
                combo.addItem(choice.title, choice.value)
                combo.setItemData(combo.count - 1, choice.tooltip, qt.Qt.ToolTipRole)
            combo.blockSignals(wasBlocked)
        if self._parameterNode:
            self.selectChoice(self.ui.modelComboBox, self._parameterNode.model)
            self.selectChoice(self.ui.deviceComboBox, self._parameterNode.device)

    @staticmethod
    def selectChoice(combo, value) -> None:
        index = combo.findData(value)
        if index < 0 and value:  # a model file loaded earlier (saved scene)
            combo.addItem(value, value)
            index = combo.count - 1
        combo.setCurrentIndex(max(index, 0))

    def onModelChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)
            # what the model's card asks for: affine pre-alignment for a model trained on pre-aligned pairs, and its
            # refinement steps (the user may change either)
            defaults = registration.card_defaults(self._parameterNode.model)
            self._parameterNode.affine = defaults.affine
            self._parameterNode.refineSteps = defaults.refine_steps

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onLoadModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, "Load a MetaRegistration model", "",
                                              "Model weights (*.safetensors)")
        if path:
            self.selectChoice(self.ui.modelComboBox, path)

    def updateButtons(self, caller=None, event=None) -> None:
        running = self._job is not None and not self._job.done
        p = self._parameterNode
        ready = bool(p and p.fixedVolume and p.movingVolume)
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = ("Stop the registration; the scene stays as it was" if running else
                                       "Register the moving volume to the fixed volume" if ready else
                                       "Select a fixed and a moving volume")
        network = bool(p and p.model != registration.ITERATIVE)
        self.ui.adaptStepsSpinBox.enabled = network
        self.ui.refineStepsSpinBox.enabled = network
        self.ui.diffeomorphicCheckBox.enabled = not network
        hasOutputs = bool(p and p.outputTransform)
        adapting = self._finetuneJob is not None and not self._finetuneJob.done
        self.ui.finetuneButton.text = "Cancel adapting" if adapting else "Start adapting"
        self.ui.finetuneButton.enabled = adapting or network
        for button in (self.ui.overlayButton, self.ui.checkerboardButton, self.ui.jacobianButton,
                       self.ui.landmarksButton, self.ui.lossPlotButton, self.ui.placeUnderTransformButton):
            button.enabled = hasOutputs and not running

    # --- running ----------------------------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self._job is not None and not self._job.done:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling…"
            return
        if not self.ensureDependencies():
            return
        p = self._parameterNode
        inputs = registration.RegistrationInputs(p.fixedVolume, p.movingVolume, p.fixedLandmarks, p.movingLandmarks,
                                                 p.fixedSegmentation, p.movingSegmentation)
        settings = registration.RegistrationSettings(model=p.model, adapt_steps=p.adaptSteps,
                                                     refine_steps=p.refineSteps, affine=p.affine,
                                                     diffeomorphic=p.diffeomorphic, device=p.device,
                                                     checkerboard_squares=p.checkerboardSquares)
        try:
            self._job = self.logic.start(inputs, settings)
        except convert.NodeInputError as error:
            slicer.util.errorDisplay(str(error), windowTitle="MetaRegistration: check the inputs")
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting…"
        self._pollTimer.start()
        self.updateButtons()

    def onPoll(self) -> None:
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
            self.ui.statusLabel.text = "Failed; nothing was added to the scene."
            slicer.util.errorDisplay(f"The registration failed: {error}", windowTitle="MetaRegistration",
                                     detailedText=job.error_details or None)
            result = None
        else:
            self.ui.statusLabel.text = result.results_line if result else "Cancelled; the scene is unchanged."
        if result is not None:
            self._parameterNode.outputTransform = result.transform
            self.onShowCheck("overlay")
        self.updateButtons()

    # --- adapt the model to my images -------------------------------------------------------------------------------

    def onModelFolderChanged(self, path) -> None:
        qt.QSettings().setValue(MODEL_FOLDER_SETTING, path)
        self.fillChoices()

    def onFinetuneButton(self) -> None:
        if self._finetuneJob is not None and not self._finetuneJob.done:
            self._finetuneJob.cancel()
            self.ui.finetuneProgressBar.format = "Cancelling…"
            return
        if not self.ensureDependencies():
            return
        p = self._parameterNode
        inputs = finetune.FinetuneInputs(p.fixedVolume, list(self.ui.finetuneVolumesSelector.checkedNodes()),
                                         self.ui.finetunePairsPathLineEdit.currentPath or None)
        settings = finetune.FinetuneSettings(parent=p.model, steps=p.finetuneSteps, device=p.device,
                                             model_dir=self.ui.modelFolderPathLineEdit.currentPath or None)
        try:
            self._finetuneJob = self.logic.start_finetune(inputs, settings)
        except convert.NodeInputError as error:
            slicer.util.errorDisplay(str(error), windowTitle="MetaRegistration: adapt the model")
            return
        self.ui.finetuneProgressBar.value = 0
        self._finetuneTimer.start()
        self.updateButtons()

    def onFinetunePoll(self) -> None:
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
            self.ui.finetuneProgressBar.format = "Failed; no model was saved."
            slicer.util.errorDisplay(f"Adapting the model failed: {error}", windowTitle="MetaRegistration",
                                     detailedText=job.error_details or None)
            path = None
        else:
            self.ui.finetuneProgressBar.format = f"Saved {path}" if path else "Cancelled; no model was saved."
        if path is not None:
            self.fillChoices()
            self.selectChoice(self.ui.modelComboBox, str(path))
        self.updateButtons()

    def ensureDependencies(self) -> bool:
        """Install what the engine needs after the user agrees: torch through the PyTorch extension, the rest with
        pip (never Slicer's own numpy or SimpleITK)."""
        question = dependencies.install_message()
        if not question:
            return True
        if not slicer.util.confirmOkCancelDisplay(question, "MetaRegistration needs Python packages"):
            return False
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            if not dependencies.is_installed("torch"):
                try:
                    import PyTorchUtils
                except ModuleNotFoundError:
                    slicer.util.errorDisplay("MetaRegistration needs the PyTorch extension. Install it with the "
                                             "Extensions Manager, restart Slicer, and press Apply again.")
                    return False
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    slicer.util.errorDisplay("PyTorch was not installed; see the PyTorch module for details.")
                    return False
            for requirement in dependencies.pip_requirements():
                slicer.util.pip_install(requirement)
        if dependencies.missing():
            if slicer.util.confirmOkCancelDisplay("The packages are installed; Slicer must restart to use them. "
                                                  "Restart now?", "MetaRegistration"):
                slicer.util.restart()
            return False
        self.fillChoices()
        return True

    # --- views ------------------------------------------------------------------------------------------------------

    def currentOutputs(self):
        return outputs.outputs_of(self._parameterNode.outputTransform)

    def onShowCheck(self, check) -> None:
        with slicer.util.tryWithErrorDisplay(f"Cannot show the {check} check.", waitCursor=True):
            runOutputs = self.currentOutputs()
            fixed, moving = outputs.input_volumes_of(runOutputs.transform)
            inputs = registration.RegistrationInputs(fixed, moving)
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
            sliceLogics = slicer.app.applicationLogic().GetSliceLogics()
            views.show_check(slicer.mrmlScene, check, inputs, runOutputs, self._parameterNode.overlayOpacity,
                             [sliceLogics.GetItemAsObject(i) for i in range(sliceLogics.GetNumberOfItems())])

    def onOpacityChanged(self, value) -> None:
        views.set_foreground_opacity(slicer.mrmlScene, value)

    def onCheckerboardSquaresChanged(self, squares) -> None:
        if self._parameterNode and self._parameterNode.outputTransform:
            runOutputs = self.currentOutputs()
            fixed, _ = outputs.input_volumes_of(runOutputs.transform)
            outputs.update_checkerboard(runOutputs, fixed, squares)

    def onShowLossPlot(self) -> None:
        chart = self.currentOutputs().loss_chart
        if chart is None:
            slicer.util.infoDisplay("This registration has no loss curve (a network without adaptation steps).")
            return
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onPlaceUnderTransform(self) -> None:
        p = self._parameterNode
        _, movingVolume = outputs.input_volumes_of(p.outputTransform)  # the volume of that run, not the selection
        self.logic.place_under_transform(p.outputTransform, [movingVolume, p.movingLandmarks, p.movingSegmentation])


#
# MetaRegistrationLogic
#


class MetaRegistrationLogic(ScriptedLoadableModuleLogic, registration.MetaRegistrationLogic):
    """Slicer's logic facade: the parameter node of ScriptedLoadableModuleLogic plus
    :class:`MetaRegistrationLib.logic.MetaRegistrationLogic` (start / finish / run on ``slicer.mrmlScene``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        registration.MetaRegistrationLogic.__init__(self, slicer.mrmlScene)


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
        self.delayDisplay("Registering the brain3d sample pair")
        selftest.run_self_test(slicer.mrmlScene, log=self.delayDisplay)
        self.delayDisplay("Test passed")
