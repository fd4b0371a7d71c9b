"""Slicer's MRML scene and slice views without the Slicer desktop application (``slicer-core`` via trame-slicer).

Used by the pytest suite, the screenshots and (later) the web panel. In desktop Slicer nothing here is needed: the
application already owns the scene (``slicer.mrmlScene``) and the views.

Offscreen rendering needs an OpenGL that works without a display: Debian's ``libosmesa6`` with
``VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow`` (set by :func:`use_offscreen_opengl` before VTK renders).
"""

from __future__ import annotations

import os
from pathlib import Path

_APP = None
_VIEW_FACTORY = None



def use_offscreen_opengl() -> None:
    """Ask VTK for its OSMesa render window (no display needed); call before the first render."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkOSOpenGLRenderWindow")


def get_app():
    """The process's one ``trame_slicer.core.SlicerApp``; ``slicer.mrmlScene`` is set to its scene.

    Building it takes a few seconds, so it is made once and reused; call :func:`clear_scene` between uses.
    """
    global _APP
    if _APP is None:
        use_offscreen_opengl()
        import slicer
        from trame_slicer.core import SlicerApp

        _APP = SlicerApp()
        slicer.mrmlScene = _APP.scene
    return _APP


def clear_scene() -> None:
    """Remove every node but the singletons (view, slice and layout nodes stay)."""
    get_app().scene.Clear(0)


def slice_views(size: tuple[int, int] = (400, 400)):
    """The Red (axial), Yellow (sagittal) and Green (coronal) slice views, rendering offscreen at ``size`` pixels;
    made on first use."""
    global _VIEW_FACTORY
    app = get_app()
    from trame_slicer.views import DirectViewFactory, SliceView, ViewLayoutDefinition

    if _VIEW_FACTORY is None:
        _VIEW_FACTORY = DirectViewFactory(do_render_offscreen=True)
        app.view_manager.register_factory(_VIEW_FACTORY)
    definitions = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view(),
                   ViewLayoutDefinition.coronal_view())
    views = []
    for definition in definitions:
        view = app.view_manager.create_view(definition)
        if not isinstance(view, SliceView):
            raise RuntimeError(f"could not create the {definition.singleton_tag} slice view")
        views.append(view)
    app.view_manager.set_current_view_ids([definition.singleton_tag for definition in definitions])
    for view in views:
        view.render_window().SetSize(*size)
    for logic in slice_logics():
        logic.ResizeSliceNode(*size)
    return views


def slice_logics() -> list:
    """The slice logics of the application (one per slice view), as ``slicer.app.applicationLogic()`` has them."""
    collection = get_app().app_logic.GetSliceLogics()
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def render_rgb(view):
    """Render one slice view as it is set up now: ``(height, width, 3)`` uint8, bottom row first (VTK's order)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    view.render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(view.render_window())
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3]


def render_views_png(path: str | Path, size: tuple[int, int] = (400, 400)) -> Path:
    """Render the Red, Yellow and Green views side by side into one PNG (a thin dark gap between them)."""
    import numpy as np
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    panels = []
    for view in slice_views(size):
        pixels = render_rgb(view)
        panels += [pixels, np.full((pixels.shape[0], 4, 3), 40, dtype=np.uint8)]
    strip = np.ascontiguousarray(np.concatenate(panels[:-1], axis=1))
    out = vtk.vtkImageData()
    out.SetDimensions(strip.shape[1], strip.shape[0], 1)
    out.GetPointData().SetScalars(numpy_to_vtk(strip.reshape(-1, 3), deep=True))
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(out)
    writer.Write()
    return Path(path)
