"""Regenerate SemiSupSeg/CMakeLists.txt so it lists every file of the module's packages: the engine
(SemiSupSegLib: scripts and shipped models) and the Qt-free scene layer (SemiSupSegMRML).

Run after adding or removing a file under SemiSupSeg/SemiSupSegLib or SemiSupSeg/SemiSupSegMRML:
    python tools/update_cmake_lists.py
``Testing/test_packaging.py`` fails when the committed CMakeLists.txt is out of date.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
PACKAGES = ("SemiSupSegLib", "SemiSupSegMRML")


def _package_files(package: str) -> list[str]:
    """A package's files relative to the module folder: the git-tracked ones when in a git checkout
    (so work in progress is not listed), otherwise every file on disk."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--", package], cwd=MODULE, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    if not out:
        out = [p.relative_to(MODULE).as_posix() for p in (MODULE / package).rglob("*") if p.is_file()]
    return sorted(f for f in out if "__pycache__" not in f and (MODULE / f).is_file())


def render() -> str:
    files = [f for package in PACKAGES for f in _package_files(package)]
    scripts = [f for f in files if f.endswith(".py")]
    resources = [f for f in files if not f.endswith((".py", ".pyc"))]
    template = (MODULE / "CMakeLists.txt.in").read_text()
    indent = lambda items: "\n".join(f"  {item}" for item in items)  # noqa: E731
    return template.replace("@SCRIPTS@", indent(scripts)).replace("@RESOURCES@", indent(resources))


def main() -> int:
    target = MODULE / "CMakeLists.txt"
    text = render()
    if "--check" in sys.argv:
        return 0 if target.is_file() and target.read_text() == text else 1
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
