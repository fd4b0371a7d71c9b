"""MRML glue of the MetaRegistration module: everything between Slicer's scene and the ``metareg`` engine.

Runs in desktop Slicer and in ``slicer-core`` alike: it uses ``slicer.vtkMRML*``, ``slicer.util`` and vtk, never qt,
ctk or ``slicer.app``. Torch is imported only when a registration runs, so the module's panel can open (and offer to
install torch) before torch is present.

- :mod:`.convert`: volume nodes ↔ SimpleITK images, markups ↔ landmarks, segmentations → label maps, field → grid
  transform node (all geometry exact, LPS ↔ RAS handled here and nowhere else in the module).
- :mod:`.outputs`: the output nodes of a run (warped volume, transform, checkerboard, Jacobian, tables, plot).
- :mod:`.views`: slice-view layers for each visual check (overlay, checkerboard, Jacobian, landmarks).
- :mod:`.logic`: runs the engine in a background thread with progress and cancel; applies results on success only.
- :mod:`.finetune`: adapt a model to my images: fine-tune on scene volumes or a pairs CSV in a background thread,
  saving the new model and its card into the user's model folder.
- :mod:`.selftest`: the self-test body shared by Slicer's ScriptedLoadableModuleTest and pytest.
- :mod:`.dependencies`: which Python packages the engine needs and which are missing.
- :mod:`.sampledata`: the sample data and the module's resources, loaded through MRML storage nodes.
- :mod:`.headless`: slicer-core's scene and offscreen slice views (tests, screenshots; unused in desktop Slicer).
"""
