"""Project rules: the engine never imports Slicer, and the extension's CMake lists every engine file."""

import ast
import json
import py_compile
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "SemiSupSeg" / "SemiSupSegLib"
TRAINING_WIDGETS = REPO / "SemiSupSegTraining" / "SemiSupSegTrainingLib"
SCENE_LAYER = REPO / "SemiSupSeg" / "SemiSupSegMRML"
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "sitkUtils", "mrml"}
FORBIDDEN_IN_SCENE_LAYER = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_engine_file_imports_slicer_qt_ctk_or_vtk():
    files = sorted(ENGINE.rglob("*.py"))
    assert len(files) > 10
    offenders = {str(f.relative_to(REPO)): sorted(_imported_roots(f) & FORBIDDEN) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_every_engine_module_loads_no_slicer_module():
    code = (
        "import importlib, pkgutil, sys, SemiSupSegLib\n"
        "for m in pkgutil.walk_packages(SemiSupSegLib.__path__, 'SemiSupSegLib.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & set(sys.argv[1:])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *FORBIDDEN], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_scene_layer_imports_no_qt_ctk_or_scripted_module():
    files = sorted(SCENE_LAYER.rglob("*.py"))
    assert len(files) >= 5
    offenders = {
        str(f.relative_to(REPO)): sorted(
            n
            for n in _imported_names(f)
            if any(n == x or n.startswith(x + ".") for x in FORBIDDEN_IN_SCENE_LAYER)
        )
        for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_cmake_lists_every_engine_file():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "update_cmake_lists.py"), "--check"])
    assert result.returncode == 0, "a CMakeLists.txt is stale: run python tools/update_cmake_lists.py"
    cmake = (REPO / "SemiSupSeg" / "CMakeLists.txt").read_text()
    for module in ("cli/__init__.py", "cli/train.py", "training.py", "inference.py", "methods/base.py"):
        assert f"SemiSupSegLib/{module}" in cmake
    for package in ("SemiSupSegMRML", "SemiSupSegWidgets"):
        tracked = subprocess.run(
            ["git", "ls-files", "--", package], cwd=REPO / "SemiSupSeg", capture_output=True, text=True
        ).stdout.split()
        on_disk = [
            p.relative_to(REPO / "SemiSupSeg").as_posix()
            for p in (REPO / "SemiSupSeg" / package).glob("*.py")
        ]
        assert tracked or on_disk, package
        for path in tracked or on_disk:
            assert f"  {path}\n" in cmake, path


def test_training_cmake_lists_every_widget_section():
    files = sorted(TRAINING_WIDGETS.glob("*.py"))
    assert len(files) >= 3
    cmake = (REPO / "SemiSupSegTraining" / "CMakeLists.txt").read_text()
    for path in files:
        assert f"  SemiSupSegTrainingLib/{path.name}\n" in cmake, path.name


def test_extension_cmake_declares_both_modules_and_pytorch():
    text = (REPO / "CMakeLists.txt").read_text()
    assert "add_subdirectory(SemiSupSeg)" in text and "add_subdirectory(SemiSupSegTraining)" in text
    assert 'EXTENSION_DEPENDS "PyTorch"' in text and 'EXTENSION_CATEGORY "Segmentation"' in text


def test_slicer_module_files_compile(tmp_path):
    modules = [REPO / "SemiSupSeg/SemiSupSeg.py", REPO / "SemiSupSegTraining/SemiSupSegTraining.py"]
    for module in modules + sorted(TRAINING_WIDGETS.glob("*.py")):
        py_compile.compile(str(module), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_shipped_models_are_valid_json_and_listed_in_cmake():
    metas = sorted((ENGINE / "pretrained").glob("*/model.json"))
    assert metas, "no shipped model"
    cmake = (REPO / "SemiSupSeg" / "CMakeLists.txt").read_text()
    for meta in metas:
        assert json.loads(meta.read_text())["networks"]
        assert meta.relative_to(REPO / "SemiSupSeg").as_posix() in cmake
        assert (meta.parent / "weights.pt").relative_to(REPO / "SemiSupSeg").as_posix() in cmake


def test_panel_side_modules_import_without_torch_or_monai():
    """The panels list models and build commands before torch is installed in Slicer."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\nsys.modules['monai'] = None\n"
        "import SemiSupSegLib.model_index, SemiSupSegLib.slicer_bridge, SemiSupSegLib.train_process\n"
        "print(any(m['origin'] == 'shipped' for m in SemiSupSegLib.model_index.list_models()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
