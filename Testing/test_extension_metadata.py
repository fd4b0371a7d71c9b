"""The Slicer extension's metadata and CMake files, checked without Slicer.

- MetaRegistration.json (the entry for Slicer's Extensions Index) satisfies the catalog entry schema
  slicer-extension-catalog-entry-schema-v1.0.2 (its constraints are transcribed below; the schema file itself is
  not copied here) and agrees with the EXTENSION_* variables of CMakeLists.txt.
- The top-level CMakeLists.txt says what the Extensions Index reads in the form its checks read it (project name,
  icon and screenshot URLs that point to files of this repository), a plain description, contributors as
  "Name (Organisation)", and the minimum Slicer version (5.10).
- MetaRegistration/CMakeLists.txt follows Slicer's scripted-module template: no globs, no configure-time file(COPY),
  every .py of the module folder listed exactly once, the icon and .ui under MetaRegistration/Resources/ listed,
  WITH_GENERIC_TESTS, the self-test under ctest, the model zoo and the self-test's sample data copied beside it.
- With cmake on the PATH: both CMake files configure, build and install against a stand-in for Slicer's CMake package
  (same macro keywords and file-copy rule as slicerMacroBuildScriptedModule / ctkMacroCompilePythonScript) into
  exactly the layout the module expects, and refuse a Slicer older than 5.10.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MetaRegistration"
TOP_CMAKE = REPO / "CMakeLists.txt"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
CATALOG_ENTRY = REPO / "MetaRegistration.json"
RAW_URL = "https://raw.githubusercontent.com/metaregistration/SlicerMetaRegistration/main/"
MINIMUM_SLICER_VERSION = "5.10"

#: The URL existing Extensions Index entries use for this schema version (github:Slicer/ExtensionsIndex, e.g.
#: SlicerRT.json, SlicerHeart.json): the schema's own "$id".
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.2.json#")

#: The constraints of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json (draft-07), transcribed:
#: "required", "additionalProperties": false, and each property's "type" / "enum" / "minimum" / "maximum" / "items".
CATALOG_SCHEMA = {
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "dicom_support_rule": {"type": "string"},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}

_JSON_TYPES = {"string": str, "array": list, "boolean": bool, "object": dict}


def _has_type(value, type_name: str) -> bool:
    if type_name == "integer":  # JSON Schema: bool is not an integer
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES[type_name])


def catalog_entry_errors(entry, schema=CATALOG_SCHEMA) -> list[str]:
    """What in ``entry`` the catalog entry schema rejects (empty when it validates)."""
    if not isinstance(entry, dict):
        return ["the entry is not a JSON object"]
    errors = [f"required key {key!r} is missing" for key in schema["required"] if key not in entry]
    for key, value in entry.items():
        rule = schema["properties"].get(key)
        if rule is None:
            if not schema["additionalProperties"]:
                errors.append(f"key {key!r} is not allowed by the schema")
            continue
        if not _has_type(value, rule["type"]):
            errors.append(f"{key!r} must be of type {rule['type']}, not {type(value).__name__}")
            continue
        if "enum" in rule and value not in rule["enum"]:
            errors.append(f"{key!r} must be one of {rule['enum']}, not {value!r}")
        if "minimum" in rule and value < rule["minimum"]:
            errors.append(f"{key!r} must be >= {rule['minimum']}")
        if "maximum" in rule and value > rule["maximum"]:
            errors.append(f"{key!r} must be <= {rule['maximum']}")
        if "items" in rule:
            errors += [f"{key!r}[{i}] must be of type {rule['items']['type']}" for i, item in enumerate(value)
                       if not _has_type(item, rule["items"]["type"])]
    return errors


# ---------------------------------------------------------------------------------------------------------------
# Reading CMake files


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "" for line in text.splitlines())


def cmake_set_value(text: str, name: str) -> str:
    """The quoted value of a one-line ``set(NAME "value")``, as the Extensions Index's checks read it."""
    match = re.search(rf'^set\({name} "([^"]*)"\)', text, re.M)
    assert match, f"no set({name} \"...\") line"
    return match.group(1)


def cmake_list(text: str, name: str, module_name: str = "MetaRegistration") -> list[str]:
    """The items of ``set(NAME item item ...)``, with ``${MODULE_NAME}`` expanded."""
    match = re.search(rf"^set\({name}\s(.*?)\)", _strip_comments(text), re.M | re.S)
    assert match, f"no set({name} ...) in the CMake file"
    return [item.replace("${MODULE_NAME}", module_name) for item in match.group(1).split()]


def cmake_call(text: str, command: str) -> str:
    """The arguments of the (first) call of ``command(...)`` (no nested parentheses in it)."""
    match = re.search(rf"^\s*{command}\((.*?)\)", _strip_comments(text), re.M | re.S)
    assert match, f"no {command}(...) call"
    return match.group(1)


@pytest.fixture(scope="module")
def top_cmake() -> str:
    return TOP_CMAKE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def module_cmake() -> str:
    return MODULE_CMAKE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# The catalog entry


def test_catalog_entry_validates_against_the_schema(entry):
    assert catalog_entry_errors(entry) == []
    assert entry["$schema"] == SCHEMA_URL
    assert b"\r" not in CATALOG_ENTRY.read_bytes(), "the Extensions Index wants LF line endings"


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("scm_url"), "required key 'scm_url'"),
    (lambda e: e.update(homepage="https://example.org"), "'homepage' is not allowed"),
    (lambda e: e.update(build_dependencies="PyTorch"), "'build_dependencies' must be of type array"),
    (lambda e: e.update(build_dependencies=["PyTorch", 3]), "'build_dependencies'[1]"),
    (lambda e: e.update(tier=6), "'tier' must be <= 5"),
    (lambda e: e.update(tier=True), "'tier' must be of type integer"),
    (lambda e: e.update(scm_type="svn"), "'scm_type' must be one of"),
])
def test_the_schema_check_rejects_broken_entries(entry, change, message):
    broken = json.loads(json.dumps(entry))
    change(broken)
    assert any(message in error for error in catalog_entry_errors(broken)), catalog_entry_errors(broken)


def test_catalog_entry_agrees_with_the_cmake_metadata(entry, top_cmake):
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["build_dependencies"] == cmake_set_value(top_cmake, "EXTENSION_DEPENDS").split()
    assert entry["category"] == cmake_set_value(top_cmake, "EXTENSION_CATEGORY") == "Registration"
    build_subdirectory = re.search(r"^set\(EXTENSION_BUILD_SUBDIRECTORY \"?([^\")]+)\"?\)", top_cmake, re.M)
    assert entry.get("build_subdirectory", ".") == (build_subdirectory.group(1) if build_subdirectory else ".")
    assert entry["scm_revision"] == "main"
    assert entry["scm_url"] == "https://github.com/metaregistration/SlicerMetaRegistration.git"
    homepage = cmake_set_value(top_cmake, "EXTENSION_HOMEPAGE")
    assert entry["scm_url"].removesuffix(".git") == homepage


def test_names_follow_the_extensions_index_conventions(entry, top_cmake):
    """The entry is named after the extension (= the top-level project()), which does not start with "Slicer";
    the repository's name does; scm_url is https."""
    project = re.search(r"^project\(\s*([^\s)]+)", top_cmake, re.M | re.I)
    assert project and project.group(1) == CATALOG_ENTRY.stem == "MetaRegistration"
    assert not CATALOG_ENTRY.stem.lower().startswith("slicer")
    url = urlsplit(entry["scm_url"])
    assert url.scheme == "https"
    assert Path(url.path).stem.startswith("Slicer")
    assert (REPO / "LICENSE").is_file()


# ---------------------------------------------------------------------------------------------------------------
# The top-level CMakeLists.txt


def _repository_file(url: str) -> Path:
    assert url.startswith(RAW_URL), f"{url} is not a raw URL of this repository's main branch"
    return REPO / url.removeprefix(RAW_URL)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_icon_and_screenshot_urls_point_to_files_of_this_repository(top_cmake):
    icon = _repository_file(cmake_set_value(top_cmake, "EXTENSION_ICONURL"))
    assert icon == REPO / "Resources" / "Icons" / "MetaRegistration.png" and _is_png(icon)
    assert icon.read_bytes()[16:24] == (128).to_bytes(4, "big") * 2, "the extension icon is 128 x 128"
    screenshots = [_repository_file(url) for url in cmake_set_value(top_cmake, "EXTENSION_SCREENSHOTURLS").split()]
    assert screenshots, "no screenshot"
    for screenshot in screenshots:
        assert screenshot.is_file() and _is_png(screenshot), screenshot
    # Screenshots of the module's results in Slicer's views.
    assert all(s.parent == REPO / "Resources" / "Screenshots" and s.name.startswith("slicer-") for s in screenshots)


def test_description_is_plain(top_cmake):
    description = cmake_set_value(top_cmake, "EXTENSION_DESCRIPTION")
    assert len(description) <= 300 and description.endswith(".")
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", description) if s]
    assert 1 <= len(sentences) <= 2, sentences
    assert "(" not in description and ";" not in description, "no lists of terms"
    jargon = ("meta-learning", "test-time", "jacobian", "tre", "folding", "deformable", "iterative", "displacement")
    words = set(re.findall(r"[a-z-]+", description.lower()))
    assert not words & set(jargon), words & set(jargon)


def test_contributors_are_name_and_organisation(top_cmake):
    contributors = cmake_set_value(top_cmake, "EXTENSION_CONTRIBUTORS")
    # Slicer's spec: "Firstname1 Lastname1 ([SubOrg1, ]Org1), Firstname2 Lastname2 ([SubOrg2, ]Org2)".
    entry = r"[^,()]+ \([^()]+\)"
    assert re.fullmatch(rf"{entry}(, {entry})*", contributors), contributors


def test_minimum_slicer_version_is_checked_after_find_package(top_cmake):
    text = _strip_comments(top_cmake)
    assert re.search(rf'set\(MetaRegistration_MINIMUM_SLICER_VERSION "{re.escape(MINIMUM_SLICER_VERSION)}"\)', text)
    check = re.search(r"if\(Slicer_VERSION VERSION_LESS MetaRegistration_MINIMUM_SLICER_VERSION\)\s*"
                      r"message\(FATAL_ERROR", text)
    assert check
    assert text.index("find_package(Slicer REQUIRED)") < check.start()
    assert check.start() < text.index("add_subdirectory(MetaRegistration)")


# ---------------------------------------------------------------------------------------------------------------
# MetaRegistration/CMakeLists.txt


def module_python_files() -> list[str]:
    """Every .py file of the module folder (module, MetaRegistrationLib, metareg), relative to it."""
    return sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                  if "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts))


@pytest.mark.parametrize("path", [TOP_CMAKE, MODULE_CMAKE], ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_globs_and_no_configure_time_copies(path):
    text = _strip_comments(path.read_text(encoding="utf-8"))
    assert not re.search(r"file\s*\(\s*GLOB", text, re.I)
    assert not re.search(r"file\s*\(\s*COPY", text, re.I)
    assert not re.search(r"configure_file\s*\(", text, re.I)


def test_every_python_file_is_listed_once(module_cmake):
    scripts = cmake_list(module_cmake, "MODULE_PYTHON_SCRIPTS")
    on_disk = module_python_files()
    assert {"MetaRegistration.py", "MetaRegistrationLib/__init__.py", "metareg/__init__.py"} <= set(on_disk)
    duplicates = sorted({s for s in scripts if scripts.count(s) > 1})
    assert not duplicates, f"listed more than once: {duplicates}"
    missing = sorted(set(on_disk) - set(scripts))
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in MetaRegistration/CMakeLists.txt: {missing}"
    absent = sorted(s for s in scripts if not (MODULE_DIR / s).is_file())
    assert not absent, f"listed but absent: {absent}"


def test_module_macro_call_follows_the_template(module_cmake):
    call = cmake_call(module_cmake, "slicerMacroBuildScriptedModule")
    assert re.search(r"\bNAME \$\{MODULE_NAME\}", call)
    assert re.search(r"\bSCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}", call)
    assert re.search(r"\bRESOURCES \$\{MODULE_PYTHON_RESOURCES\}", call)
    assert re.search(r"\bWITH_GENERIC_TESTS\b", call)
    assert re.search(r"^set\(MODULE_NAME MetaRegistration\)", module_cmake, re.M)
    testing = re.search(r"^if\(BUILD_TESTING\)(.*?)^endif\(\)", module_cmake, re.M | re.S)
    assert testing and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing.group(1)


def test_module_resources_are_listed_and_under_the_module_folder(module_cmake):
    resources = cmake_list(module_cmake, "MODULE_PYTHON_RESOURCES")
    assert "Resources/Icons/MetaRegistration.png" in resources  # where Slicer looks for the module's icon
    assert "Resources/UI/MetaRegistration.ui" in resources  # self.resourcePath("UI/MetaRegistration.ui")
    for resource in resources:
        assert not resource.startswith(("/", "..")), resource
        assert (MODULE_DIR / resource).is_file(), resource
    assert _is_png(MODULE_DIR / "Resources/Icons/MetaRegistration.png")
    assert not (REPO / "Resources" / "UI").exists(), "the .ui belongs to the module: MetaRegistration/Resources/UI"


def test_model_zoo_and_sample_data_are_copied_beside_the_module(module_cmake):
    data = cmake_list(module_cmake, "MODULE_DATA_FILES")
    duplicates = sorted({d for d in data if data.count(d) > 1})
    assert not duplicates, duplicates
    absent = sorted(d for d in data if not (REPO / d).is_file())
    assert not absent, f"listed but absent: {absent}"
    zoo = REPO / "models"
    index = json.loads((zoo / "index.json").read_text())["models"]
    wanted = {"models/index.json"}
    wanted |= {f"models/{p.name}" for p in zoo.iterdir() if p.suffix in (".json", ".safetensors")}
    for model in index:
        wanted |= {f"models/{model['file']}", f"models/{Path(model['file']).with_suffix('.json').name}"}
    # The files the self-test loads (MetaRegistrationLib.sampledata.load_brain3d) and the data's licences.
    sampledata = (MODULE_DIR / "MetaRegistrationLib" / "sampledata.py").read_text()
    loaded = set(re.findall(r'"(brain3d_[\w.]+)"', sampledata))
    assert len(loaded) == 4, loaded
    wanted |= {f"Resources/SampleData/{name}" for name in loaded} | {"Resources/SampleData/README.md"}
    missing = sorted(wanted - set(data))
    assert not missing, f"add to MODULE_DATA_FILES in MetaRegistration/CMakeLists.txt: {missing}"
    assert not [d for d in data if not d.startswith(("models/", "Resources/SampleData/"))]


# ---------------------------------------------------------------------------------------------------------------
# Configure, build and install against a stand-in for Slicer's CMake package

#: The interface of Slicer's macros the extension uses, with their behaviour where it matters to us: the same
#: keywords and checks as slicerMacroBuildScriptedModule (CMake/SlicerMacroBuildScriptedModule.cmake, v5.10.0),
#: and ctkMacroCompilePythonScript's rule that a script or resource `path` (relative to the module's source folder)
#: is copied at build time to `<build>/<Slicer_QTSCRIPTEDMODULES_LIB_DIR>/path`, whose content is installed.
FAKE_USE_SLICER = r"""
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-${Slicer_VERSION}/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(BUILD_TESTING ON)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  set(_dest ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
  set(_outputs)
  foreach(_file ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_file})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file or directory '${_file}'")
    endif()
    add_custom_command(OUTPUT ${_dest}/${_file} DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${_file}
      COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_CURRENT_SOURCE_DIR}/${_file} ${_dest}/${_file})
    list(APPEND _outputs ${_dest}/${_file})
  endforeach()
  add_custom_target(Copy${MY_SLICER_NAME}PythonFiles ALL DEPENDS ${_outputs})
  install(DIRECTORY ${_dest}/ DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} COMPONENT RuntimeLibraries)
  if(BUILD_TESTING AND MY_SLICER_WITH_GENERIC_TESTS)
    slicer_add_python_unittest(SCRIPT qSlicer${MY_SLICER_NAME}ModuleGenericTest.py)
  endif()
endmacro()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "SLICER_ARGS;TESTNAME_PREFIX" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/python_unittests.txt "${MY_SCRIPT}\n")
endfunction()
"""


def _fake_slicer(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "SlicerConfig.cmake").write_text(
        "set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)\n"
        "set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)\n"
        "set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)\n")
    # As Slicer's CMake/SlicerConfigVersion.cmake.in: find_package sets Slicer_VERSION from PACKAGE_VERSION.
    (directory / "SlicerConfigVersion.cmake").write_text(
        f'set(PACKAGE_VERSION "{version}")\n'
        'if("${PACKAGE_VERSION}" VERSION_LESS "${PACKAGE_FIND_VERSION}")\n'
        "  set(PACKAGE_VERSION_COMPATIBLE FALSE)\nelse()\n  set(PACKAGE_VERSION_COMPATIBLE TRUE)\nendif()\n")
    (directory / "UseSlicer.cmake").write_text(FAKE_USE_SLICER)
    (directory / "Empty.cmake").write_text("")
    return directory


def _configure(tmp_path: Path, version: str) -> subprocess.CompletedProcess:
    cmake = shutil.which("cmake")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    slicer_dir = _fake_slicer(tmp_path / f"Slicer-{version}", version)
    return subprocess.run(
        [cmake, "-S", str(REPO), "-B", str(tmp_path / "build"), *generator, f"-DSlicer_DIR={slicer_dir}",
         f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'install'}"],
        capture_output=True, text=True, timeout=120)


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on the PATH")


@pytest.mark.slow
@needs_cmake
def test_cmake_builds_and_installs_the_module_layout(tmp_path, module_cmake):
    configured = _configure(tmp_path, MINIMUM_SLICER_VERSION)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    built = subprocess.run([shutil.which("cmake"), "--build", str(tmp_path / "build")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    installed = subprocess.run([shutil.which("cmake"), "--install", str(tmp_path / "build")],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    expected = set(cmake_list(module_cmake, "MODULE_PYTHON_SCRIPTS")) | set(
        cmake_list(module_cmake, "MODULE_PYTHON_RESOURCES")) | set(cmake_list(module_cmake, "MODULE_DATA_FILES"))
    modules_dir = Path("lib", f"Slicer-{MINIMUM_SLICER_VERSION}", "qt-scripted-modules")
    for tree in (tmp_path / "build" / modules_dir, tmp_path / "install" / modules_dir):
        files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
        assert files == expected, (sorted(expected - files), sorted(files - expected))
    everything = {p.relative_to(tmp_path / "install") for p in (tmp_path / "install").rglob("*") if p.is_file()}
    assert all(modules_dir in p.parents for p in everything), "nothing is installed outside qt-scripted-modules"
    # Where the module looks: MetaRegistrationLib.sampledata and metareg.core.modelio.default_zoo_dir.
    tree = tmp_path / "install" / modules_dir
    assert (tree / "Resources/UI/MetaRegistration.ui").read_bytes() == (
        MODULE_DIR / "Resources/UI/MetaRegistration.ui").read_bytes()
    assert (tree / "Resources/SampleData/brain3d_fixed_T1.nii.gz").is_file()
    assert (tree / "models/index.json").read_bytes() == (REPO / "models/index.json").read_bytes()
    tests = (tmp_path / "build" / "python_unittests.txt").read_text().split()
    assert sorted(tests) == ["MetaRegistration.py", "qSlicerMetaRegistrationModuleGenericTest.py"]

    # The installed module finds its own files there (Slicer puts qt-scripted-modules on sys.path).
    probe = ("import json, metareg, metareg.core.modelio as m, MetaRegistrationLib.sampledata as s; print(json.dumps("
             "[metareg.__file__, str(m.default_zoo_dir()), str(s.sample_data_dir()), "
             "str(s.resource_path('UI', 'MetaRegistration.ui')), "
             "str(s.resource_path('Icons', 'MetaRegistration.png'))]))")
    ran = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    assert ran.returncode == 0, ran.stderr
    package, zoo, samples, ui, icon = (Path(p) for p in json.loads(ran.stdout.splitlines()[-1]))
    assert package == tree / "metareg" / "__init__.py"
    assert (zoo, samples) == (tree / "models", tree / "Resources" / "SampleData")
    assert (ui, icon) == (tree / "Resources/UI/MetaRegistration.ui", tree / "Resources/Icons/MetaRegistration.png")


def test_checkout_lookups():
    """Slicer running the module from a checkout (Additional module paths): the module's resources beside it,
    the sample data at the repository's top."""
    sys.path.insert(0, str(MODULE_DIR))
    from MetaRegistrationLib import sampledata

    assert sampledata.resource_path("UI", "MetaRegistration.ui") == MODULE_DIR / "Resources/UI/MetaRegistration.ui"
    assert sampledata.resource_path("Icons") == MODULE_DIR / "Resources/Icons"
    assert sampledata.sample_data_dir() == REPO / "Resources" / "SampleData"
    with pytest.raises(FileNotFoundError):
        sampledata.resource_path("SampleData")  # not a module resource: sample_data_dir() finds it


@needs_cmake
def test_cmake_refuses_a_slicer_older_than_the_minimum(tmp_path):
    configured = _configure(tmp_path, "5.8")
    assert configured.returncode != 0
    assert f"MetaRegistration needs Slicer {MINIMUM_SLICER_VERSION} or later" in configured.stdout + configured.stderr
