"""The Python packages the engine needs inside Slicer, and which of them are missing.

Slicer ships numpy and SimpleITK; they must never be replaced (other modules depend on Slicer's own builds), so they
are only checked, never installed. torch comes through the PyTorch extension (it picks the build that fits the
machine's GPU); the rest are small pure-Python or wheel packages installed with ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """One package: its import name, the pip requirement that installs it, and who provides it."""

    module: str
    pip: str
    provider: str  # "slicer" (never installed by us), "pytorch-extension" or "pip"


#: The oldest torch the engine is written for (``torch.func``-free code, ``torch.amp``; tested here with 2.13).
MINIMUM_TORCH_VERSION = "2.1"

REQUIREMENTS = (
    Requirement("numpy", "numpy", "slicer"),
    Requirement("SimpleITK", "SimpleITK", "slicer"),
    Requirement("torch", f"torch>={MINIMUM_TORCH_VERSION}", "pytorch-extension"),
    Requirement("safetensors", "safetensors>=0.4", "pip"),
)


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing(requirements=None) -> list[Requirement]:
    """The requirements (default :data:`REQUIREMENTS`) whose module cannot be imported here."""
    chosen = REQUIREMENTS if requirements is None else requirements
    return [requirement for requirement in chosen if not is_installed(requirement.module)]


def pip_requirements(requirements=None) -> list[str]:
    """What ``slicer.util.pip_install`` must install now (missing packages we may install with pip)."""
    return [requirement.pip for requirement in missing(requirements) if requirement.provider == "pip"]


def install_message(requirements=None) -> str:
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


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"2.13.0+cu121"`` -> ``(2, 13, 0)``: the leading numeric parts of a version."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def torch_too_old(version: str | None = None) -> str:
    """A message when the installed torch is older than :data:`MINIMUM_TORCH_VERSION` ("" when it is new enough or
    not installed). Reads the version without importing torch."""
    if version is None:
        try:
            from importlib.metadata import PackageNotFoundError
            from importlib.metadata import version as package_version

            version = package_version("torch")
        except PackageNotFoundError:
            return ""
    if _version_tuple(version) < _version_tuple(MINIMUM_TORCH_VERSION):
        return (f"PyTorch {version} is installed, but MetaRegistration needs {MINIMUM_TORCH_VERSION} or newer: "
                "open the "
                f"PyTorch Utils module and install with the version requirement >={MINIMUM_TORCH_VERSION}, then "
                "restart Slicer")
    return ""


class InstallError(RuntimeError):
    """What the engine needs could not be installed; the message says what to do."""


def ensure_installed(confirm=None, restart=None) -> bool:
    """Install what the engine needs, after ``confirm(question)`` returns True: torch through the PyTorch extension
    (``PyTorchUtilsLogic.installTorch`` with :data:`MINIMUM_TORCH_VERSION`), the rest with ``slicer.util.pip_install``
    (never Slicer's own numpy or SimpleITK). The panel's Apply and the module's self-test both call this.

    Args:
        confirm: asks the user (default ``slicer.util.confirmOkCancelDisplay``, which answers True in Slicer's testing
            mode, so the self-test installs unattended).
        restart: offered when Slicer must restart to use what was installed (default: ask, then
            ``slicer.util.restart``).

    Returns:
        True when everything is there and usable now; False when the user declined or Slicer must restart first.

    Raises:
        InstallError: the PyTorch extension is missing, the installation failed, or torch is too old.
    """
    import slicer.util

    confirm = confirm or (lambda question: slicer.util.confirmOkCancelDisplay(
        question, "MetaRegistration needs Python packages"))
    old = torch_too_old()
    if old:
        raise InstallError(old)
    question = install_message()
    if not question:
        return True
    if not confirm(question):
        return False
    if not is_installed("torch"):
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise InstallError("MetaRegistration needs the PyTorch extension: install it with the Extensions Manager, "
                               "restart Slicer, and press Apply again") from None
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if not torch_logic.torchInstalled():
            installed = torch_logic.installTorch(askConfirmation=False,
                                                 torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
            if installed is None:
                raise InstallError("PyTorch was not installed; see the PyTorch Utils module for details")
    for requirement in pip_requirements():
        slicer.util.pip_install(requirement)
    importlib.invalidate_caches()
    if missing():
        if restart is None:
            if slicer.util.confirmOkCancelDisplay("The packages are installed; Slicer must restart to use them. "
                                                  "Restart now?", "MetaRegistration"):
                slicer.util.restart()
        else:
            restart()
        return False
    old = torch_too_old()
    if old:
        raise InstallError(old)
    return True
