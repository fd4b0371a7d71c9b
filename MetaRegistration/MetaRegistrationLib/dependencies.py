"""The Python packages the engine needs inside Slicer, and which of them are missing.

Slicer ships numpy and SimpleITK; they must never be replaced (other modules depend on Slicer's own builds), so they
are only checked, never installed. torch comes through the PyTorch extension (it picks the build that fits the
machine's GPU); the rest are small pure-Python or wheel packages installed with ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """One package: its import name, the pip requirement that installs it, and who provides it."""

    module: str
    pip: str
    provider: str  # "slicer" (never installed by us), "pytorch-extension" or "pip"


REQUIREMENTS = (
    Requirement("numpy", "numpy", "slicer"),
    Requirement("SimpleITK", "SimpleITK", "slicer"),
    Requirement("torch", "torch>=2.1", "pytorch-extension"),
    Requirement("safetensors", "safetensors>=0.4", "pip"),
)


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing(requirements=REQUIREMENTS) -> list[Requirement]:
    """The requirements whose module cannot be imported here."""
    return [requirement for requirement in requirements if not is_installed(requirement.module)]


def pip_requirements(requirements=REQUIREMENTS) -> list[str]:
    """What ``slicer.util.pip_install`` must install now (missing packages we may install with pip)."""
    return [requirement.pip for requirement in missing(requirements) if requirement.provider == "pip"]


def install_message(requirements=REQUIREMENTS) -> str:
    """The question put to the user before installing anything ("" when nothing is missing)."""
    lacking = missing(requirements)
    if not lacking:
        return ""
    lines = ["MetaRegistration needs these Python packages, which are not installed in Slicer yet:", ""]
    for requirement in lacking:
        how = {"pytorch-extension": "through the PyTorch extension (picks the build for this computer's GPU; "
                                    "about 1–3 GB to download)",
               "pip": "with pip (small)",
               "slicer": "it should come with Slicer: reinstall Slicer"}[requirement.provider]
        lines.append(f"• {requirement.module} — {how}")
    lines += ["", "Install them now? This can take several minutes; Slicer may ask to restart afterwards."]
    return "\n".join(lines)
