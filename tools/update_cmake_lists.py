"""Regenerate the modules' CMakeLists.txt so they list every file of their packages:
SemiSupSeg/CMakeLists.txt (from CMakeLists.txt.in) lists the engine (SemiSupSegLib: scripts and shipped
models), the Qt-free scene layer (SemiSupSegMRML) and the panel's widget sections (SemiSupSegWidgets);
SemiSupSegTraining/CMakeLists.txt lists its
widget sections (SemiSupSegTrainingLib) in its MODULE_PYTHON_SCRIPTS block, rewritten in place.

Run after adding or removing a file under one of these packages:
    python tools/update_cmake_lists.py
``Testing/test_packaging.py`` fails when a committed CMakeLists.txt is out of date.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "SemiSupSeg"
PACKAGES = ("SemiSupSegLib", "SemiSupSegMRML", "SemiSupSegWidgets")
TRAINING_MODULE = REPO / "SemiSupSegTraining"
TRAINING_PACKAGES = ("SemiSupSegTrainingLib",)
_SCRIPTS_BLOCK = re.compile(r"(set\(MODULE_PYTHON_SCRIPTS\n  \$\{MODULE_NAME\}\.py\n).*?(  \)\n)", re.S)


def _package_files(package: str, module: Path = MODULE) -> list[str]:
    """A package's files relative to the module folder: the git-tracked ones when in a git checkout
    (so work in progress is not listed), otherwise every file on disk."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--", package], cwd=module, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    if not out:
        out = [p.relative_to(module).as_posix() for p in (module / package).rglob("*") if p.is_file()]
    return sorted(f for f in out if "__pycache__" not in f and (module / f).is_file())


def render() -> str:
    files = [f for package in PACKAGES for f in _package_files(package)]
    scripts = [f for f in files if f.endswith(".py")]
    resources = [f for f in files if not f.endswith((".py", ".pyc"))]
    template = (MODULE / "CMakeLists.txt.in").read_text()
    indent = lambda items: "\n".join(f"  {item}" for item in items)  # noqa: E731
    return template.replace("@SCRIPTS@", indent(scripts)).replace("@RESOURCES@", indent(resources))


def render_training() -> str:
    """SemiSupSegTraining/CMakeLists.txt with its MODULE_PYTHON_SCRIPTS block listing the module
    script and every Python file of its packages (the rest of the file is kept as it is)."""
    files = [f for package in TRAINING_PACKAGES for f in _package_files(package, TRAINING_MODULE)]
    listing = "".join(f"  {f}\n" for f in files if f.endswith(".py"))
    current = (TRAINING_MODULE / "CMakeLists.txt").read_text()
    if not _SCRIPTS_BLOCK.search(current):
        raise SystemExit("SemiSupSegTraining/CMakeLists.txt has no MODULE_PYTHON_SCRIPTS block to fill")
    return _SCRIPTS_BLOCK.sub(lambda m: m.group(1) + listing + m.group(2), current, count=1)


def main() -> int:
    targets = {MODULE / "CMakeLists.txt": render(), TRAINING_MODULE / "CMakeLists.txt": render_training()}
    if "--check" in sys.argv:
        return 0 if all(t.is_file() and t.read_text() == text for t, text in targets.items()) else 1
    for target, text in targets.items():
        target.write_text(text)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
