"""The Slicer extension's metadata and CMake files, checked without Slicer.

- MetaRegistration.json (the entry for Slicer's Extensions Index) satisfies the catalog entry schema
  slicer-extension-catalog-entry-schema-v1.0.2 (its constraints are transcribed below; the schema file itself is
  not copied here) and agrees with the EXTENSION_* variables of CMakeLists.txt.
- The top-level CMakeLists.txt says what the Extensions Index reads in the form its checks read it (project name,
  icon and screenshot URLs that point to files of this repository), a plain description, contributors as
  "Name (Organisation)"; CMake itself evaluates the same values.
- MetaRegistration/CMakeLists.txt lists every .py of the module folder exactly once, the icon and .ui under
  MetaRegistration/Resources/, and the model zoo and the self-test's sample data to copy beside the module.
- What the CMake files do, with cmake (which `./run test` installs where it is missing), against a stand-in for
  Slicer's CMake package (the same macro keywords and file-copy rule as slicerMacroBuildScriptedModule /
  ctkMacroCompilePythonScript): they configure, build and install exactly the layout the module expects, one scripted
  module with the generic test and the self-test under ctest; a build follows edits of the listed files and never
  takes an unlisted one (no globs, no configure-time copies); a Slicer older than 5.10 is refused before the module
  is configured, 5.10 and later ones are not.
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


# ---------------------------------------------------------------------------------------------------------------
# MetaRegistration/CMakeLists.txt


def module_python_files() -> list[str]:
    """Every .py file of the module folder (module, MetaRegistrationLib, metareg), relative to it."""
    return sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                  if "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts))


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
#: is copied at build time to `<build>/<Slicer_QTSCRIPTEDMODULES_LIB_DIR>/path`, whose content is installed. What the
#: extension asks of Slicer is written to <build>/slicer_calls.txt, one line a call, so that the tests see it.
FAKE_USE_SLICER = r"""
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-${Slicer_VERSION}/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(BUILD_TESTING ON)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  file(APPEND ${CMAKE_BINARY_DIR}/slicer_calls.txt "scripted module ${MY_SLICER_NAME}\n")
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

#: The EXTENSION_* variables the Extensions Index reads from the top-level CMakeLists.txt.
EXTENSION_VARIABLES = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                       "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")

#: Slicer_EXTENSION_GENERATE_CONFIG: records the call, and the project and EXTENSION_* values as CMake has them then.
FAKE_GENERATE_CONFIG = "\n".join(
    ['file(APPEND ${CMAKE_BINARY_DIR}/slicer_calls.txt "extension config ${PROJECT_NAME}\\n")']
    + [f'file(APPEND ${{CMAKE_BINARY_DIR}}/extension_variables.txt "{name}=${{{name}}}\\n")'
       for name in EXTENSION_VARIABLES]) + "\n"


@pytest.fixture(scope="module")
def cmake() -> str:
    """cmake on the PATH (``./run test`` installs it where it is missing); without it the tests fail, never skip."""
    found = shutil.which("cmake")
    if found is None:
        pytest.fail("cmake is not on the PATH: `./run test` installs it (Debian's cmake), or install it yourself",
                    pytrace=False)
    return found


def _fake_slicer(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "SlicerConfig.cmake").write_text(
        "set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)\n"
        "set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/GenerateConfig.cmake)\n"
        "set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/CPack.cmake)\n")
    # As Slicer's CMake/SlicerConfigVersion.cmake.in: find_package sets Slicer_VERSION from PACKAGE_VERSION.
    (directory / "SlicerConfigVersion.cmake").write_text(
        f'set(PACKAGE_VERSION "{version}")\n'
        'if("${PACKAGE_VERSION}" VERSION_LESS "${PACKAGE_FIND_VERSION}")\n'
        "  set(PACKAGE_VERSION_COMPATIBLE FALSE)\nelse()\n  set(PACKAGE_VERSION_COMPATIBLE TRUE)\nendif()\n")
    (directory / "UseSlicer.cmake").write_text(FAKE_USE_SLICER)
    (directory / "GenerateConfig.cmake").write_text(FAKE_GENERATE_CONFIG)
    (directory / "CPack.cmake").write_text('file(APPEND ${CMAKE_BINARY_DIR}/slicer_calls.txt "extension package\\n")\n')
    return directory


def _configure(cmake: str, tmp_path: Path, version: str, source: Path = REPO) -> subprocess.CompletedProcess:
    """Configure ``source`` into tmp_path/build (install prefix tmp_path/install) against a Slicer ``version``."""
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    slicer_dir = _fake_slicer(tmp_path / f"Slicer-{version}", version)
    return subprocess.run(
        [cmake, "-S", str(source), "-B", str(tmp_path / "build"), *generator, f"-DSlicer_DIR={slicer_dir}",
         f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'install'}"],
        capture_output=True, text=True, timeout=120)


def _build(cmake: str, tmp_path: Path, *step: str) -> None:
    done = subprocess.run([cmake, *(step or ("--build",)), str(tmp_path / "build")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _calls(build: Path) -> list[str]:
    return (build / "slicer_calls.txt").read_text().splitlines()


MODULES_DIR = Path("lib", f"Slicer-{MINIMUM_SLICER_VERSION}", "qt-scripted-modules")


def test_cmake_builds_and_installs_the_module_layout(cmake, tmp_path, module_cmake):
    configured = _configure(cmake, tmp_path, MINIMUM_SLICER_VERSION)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    _build(cmake, tmp_path)
    _build(cmake, tmp_path, "--install")

    # The extension asks Slicer for one scripted module named MetaRegistration, then its config and package, in the
    # order of Slicer's extension template; the module's self-test and the generic test are registered with ctest.
    assert _calls(tmp_path / "build") == ["scripted module MetaRegistration", "extension config MetaRegistration",
                                          "extension package"]
    tests = (tmp_path / "build" / "python_unittests.txt").read_text().split()
    assert sorted(tests) == ["MetaRegistration.py", "qSlicerMetaRegistrationModuleGenericTest.py"]
    expected = set(cmake_list(module_cmake, "MODULE_PYTHON_SCRIPTS")) | set(
        cmake_list(module_cmake, "MODULE_PYTHON_RESOURCES")) | set(cmake_list(module_cmake, "MODULE_DATA_FILES"))
    for tree in (tmp_path / "build" / MODULES_DIR, tmp_path / "install" / MODULES_DIR):
        files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
        assert files == expected, (sorted(expected - files), sorted(files - expected))
    everything = {p.relative_to(tmp_path / "install") for p in (tmp_path / "install").rglob("*") if p.is_file()}
    assert all(MODULES_DIR in p.parents for p in everything), "nothing is installed outside qt-scripted-modules"
    # Where the module looks: MetaRegistrationLib.sampledata and metareg.core.modelio.default_zoo_dir.
    tree = tmp_path / "install" / MODULES_DIR
    assert (tree / "Resources/UI/MetaRegistration.ui").read_bytes() == (
        MODULE_DIR / "Resources/UI/MetaRegistration.ui").read_bytes()
    assert (tree / "Resources/SampleData/brain3d_fixed_T1.nii.gz").is_file()
    assert (tree / "models/index.json").read_bytes() == (REPO / "models/index.json").read_bytes()

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


def test_a_build_follows_edits_of_the_listed_files_and_takes_no_unlisted_one(cmake, tmp_path):
    """On a copy of the sources: an edit of a listed file reaches the build tree at the next build (files are copied at
    build time, not once at configure time), and a new .py file that nobody listed never does, even after a fresh
    configure (no globs): the lists in the CMake files are the whole truth."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for folder in ("MetaRegistration", "models", "Resources"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    shutil.copy2(TOP_CMAKE, source / "CMakeLists.txt")
    configured = _configure(cmake, tmp_path, MINIMUM_SLICER_VERSION, source)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    _build(cmake, tmp_path)
    built = tmp_path / "build" / MODULES_DIR
    edited = Path("metareg", "__init__.py")
    with open(source / "MetaRegistration" / edited, "a", encoding="utf-8") as handle:
        handle.write("\n# edited after the first build\n")
    (source / "MetaRegistration" / "metareg" / "unlisted.py").write_text("UNLISTED = True\n")
    data = Path("models", "index.json")
    (source / data).write_text((source / data).read_text() + "\n")
    _build(cmake, tmp_path)
    assert (built / edited).read_bytes() == (source / "MetaRegistration" / edited).read_bytes()
    assert (built / data).read_bytes() == (source / data).read_bytes()
    assert not (built / "metareg" / "unlisted.py").exists()
    configured = _configure(cmake, tmp_path / "again", MINIMUM_SLICER_VERSION, source)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    _build(cmake, tmp_path / "again")
    assert not (tmp_path / "again" / "build" / MODULES_DIR / "metareg" / "unlisted.py").exists()
    assert (tmp_path / "again" / "build" / MODULES_DIR / edited).is_file()


def test_cmake_has_the_metadata_the_extensions_index_reads(cmake, tmp_path, top_cmake):
    """The EXTENSION_* values as CMake evaluates them are the ones read from the text as the Extensions Index reads
    them, and the extension's project is MetaRegistration."""
    configured = _configure(cmake, tmp_path, MINIMUM_SLICER_VERSION)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    evaluated = dict(line.split("=", 1) for line in
                     (tmp_path / "build" / "extension_variables.txt").read_text(encoding="utf-8").splitlines())
    assert evaluated == {name: cmake_set_value(top_cmake, name) for name in EXTENSION_VARIABLES}
    assert evaluated["EXTENSION_DEPENDS"] == "PyTorch" and all(evaluated.values())
    assert "extension config MetaRegistration" in _calls(tmp_path / "build")


@pytest.mark.parametrize("version", ["5.10.1", "5.11", "6.0"])
def test_cmake_configures_against_the_minimum_slicer_and_later_ones(cmake, tmp_path, version):
    configured = _configure(cmake, tmp_path, version)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert _calls(tmp_path / "build")[0] == "scripted module MetaRegistration"


@pytest.mark.parametrize("version", ["5.8", "5.9"])  # 5.9 < 5.10 as versions, though not as text
def test_cmake_refuses_a_slicer_older_than_the_minimum(cmake, tmp_path, version):
    """Refused with a message, and before the module is configured (the check follows find_package(Slicer))."""
    configured = _configure(cmake, tmp_path, version)
    assert configured.returncode != 0
    assert f"MetaRegistration needs Slicer {MINIMUM_SLICER_VERSION} or later" in configured.stdout + configured.stderr
    assert f"is Slicer {version}" in configured.stdout + configured.stderr
    assert not (tmp_path / "build" / "slicer_calls.txt").exists(), "the module was configured before the refusal"


def test_checkout_lookups():
    """Slicer running the module from a checkout (Additional module paths): the module's resources beside it,
    the sample data at the repository's top."""
    from MetaRegistrationLib import sampledata

    assert Path(sampledata.__file__).parent.parent == MODULE_DIR  # the checkout's, found as Slicer finds it
    assert sampledata.resource_path("UI", "MetaRegistration.ui") == MODULE_DIR / "Resources/UI/MetaRegistration.ui"
    assert sampledata.resource_path("Icons") == MODULE_DIR / "Resources/Icons"
    assert sampledata.sample_data_dir() == REPO / "Resources" / "SampleData"
    with pytest.raises(FileNotFoundError):
        sampledata.resource_path("SampleData")  # not a module resource: sample_data_dir() finds it
