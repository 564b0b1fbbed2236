"""One installer of the engine's Python dependencies for both panels.

torch comes from the PyTorch extension (``PyTorchUtils``, the right build for the GPU); MONAI and SciPy
from pip, always with a constraints file that pins Slicer's own numpy and SimpleITK so that they are
never replaced. Nothing is installed without ``confirm`` returning True.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import pathlib
import re
import tempfile
from collections.abc import Callable, Sequence

from SemiSupSegLib.errors import InputError

TORCH_REQUIREMENT = ">=2.1"
REQUIREMENTS_FILE = pathlib.Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
FALLBACK_REQUIREMENTS = ("monai>=1.3", "scipy>=1.10")


def dependency_constraints(installed: dict[str, str | None]) -> str:
    """A pip constraints file that pins the packages Slicer ships (numpy, SimpleITK) to their installed
    versions, so installing MONAI or SciPy can never replace them."""
    lines = [f"{pkg}=={version}" for pkg, version in sorted(installed.items()) if version]
    return "\n".join(lines) + ("\n" if lines else "")


def requirement_names(lines: Sequence[str]) -> list[tuple[str, str]]:
    """``(requirement, import name)`` pairs of a requirements file's lines (comments and blanks skipped)."""
    out = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        name = re.split(r"[\s<>=!~;\[]", text, maxsplit=1)[0]
        out.append((text, name.lower().replace("-", "_")))
    return out


def requirements() -> list[tuple[str, str]]:
    """``(requirement, import name)`` of the module's ``Resources/requirements.txt`` (torch aside)."""
    lines = (
        REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines()
        if REQUIREMENTS_FILE.is_file()
        else list(FALLBACK_REQUIREMENTS)
    )
    return [(req, name) for req, name in requirement_names(lines) if name != "torch"]


def missing_dependencies() -> list[str]:
    """The requirements whose module cannot be imported: "torch" first, then pip requirement lines."""
    missing = [] if importlib.util.find_spec("torch") else ["torch"]
    return missing + [req for req, module in requirements() if importlib.util.find_spec(module) is None]


def slicer_packages() -> dict[str, str | None]:
    """Installed versions of numpy and SimpleITK (None when built into Slicer, not a pip package)."""
    versions: dict[str, str | None] = {}
    for name in ("numpy", "SimpleITK"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _install_torch() -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise InputError(
            "SemiSupSeg needs the PyTorch extension to install torch: install 'PyTorch' from the "
            "Extensions Manager, restart Slicer and try again"
        ) from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
        raise InputError("PyTorch was not installed; SemiSupSeg cannot run without it")


def _pip_install(requirement_lines: list[str]) -> None:
    import slicer

    with tempfile.TemporaryDirectory() as folder:
        constraints = pathlib.Path(folder) / "constraints.txt"
        constraints.write_text(dependency_constraints(slicer_packages()), encoding="utf-8")
        try:
            import slicer.packaging as packaging  # a submodule: not an attribute until imported
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(
                requirement_lines, constraints=str(constraints), prompt_install=False, requester="SemiSupSeg"
            )
        else:
            slicer.util.pip_install([*requirement_lines, "-c", str(constraints)])


def ensure_dependencies(confirm: Callable[[str], bool], testing: bool = False, log=logging.info) -> None:
    """Install whatever is missing, after one confirmation.

    Args:
        confirm: shows the question and returns True to install (the panel's OK/Cancel dialog).
        testing: Slicer runs a self-test: never install, name what is missing instead.
        log: receives status lines.

    Raises:
        InputError: the user declined, the PyTorch extension is absent, or installing failed.
    """
    missing = missing_dependencies()
    if not missing:
        return
    if testing:
        raise InputError(f"missing Python packages {', '.join(missing)}; install them before testing")
    if not confirm(
        "SemiSupSeg needs these Python packages, which are not installed yet: "
        f"{', '.join(missing)}.\n\nInstall them now? This downloads several hundred MB and may take "
        "minutes. Slicer's own numpy and SimpleITK are kept."
    ):
        raise InputError(f"SemiSupSeg cannot run without {', '.join(missing)} (installation declined)")
    if "torch" in missing:
        log("Installing PyTorch (this may take several minutes)...")
        _install_torch()
    others = [req for req in missing if req != "torch"]
    if others:
        log(f"Installing {', '.join(others)}...")
        _pip_install(others)
    importlib.invalidate_caches()  # let find_spec see the packages pip just installed
    still = missing_dependencies()
    if still:
        raise InputError(f"installing {', '.join(still)} failed; see the Python console for pip's messages")
