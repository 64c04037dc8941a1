from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.install import d2wheel


def test_numpy_aliases_become_builtins_and_leave_real_dtypes_alone() -> None:
    src = "a.astype(np.bool)\nnp.zeros(3, dtype=np.int)\nx = np.float\nnp.bool_ np.float32 np.int64"
    assert d2wheel.fix_numpy_aliases(src) == (
        "a.astype(bool)\nnp.zeros(3, dtype=int)\nx = float\nnp.bool_ np.float32 np.int64")


def test_pillow_linear_becomes_bilinear() -> None:
    src = "def f(interp=Image.LINEAR): return Image.LINEARITY"
    assert d2wheel.fix_pillow_linear(src) == "def f(interp=Image.BILINEAR): return Image.LINEARITY"


def test_pkg_resources_lookup_becomes_importlib_resources() -> None:
    src = ('import pkg_resources\n'
           'cfg_file = pkg_resources.resource_filename(\n'
           '    "detectron2.model_zoo", os.path.join("configs", config_path)\n)\n')
    out = d2wheel.fix_pkg_resources(src)
    assert "pkg_resources" not in out
    assert 'importlib.resources.files("detectron2.model_zoo")' in out
    compile(out, "model_zoo.py", "exec")


def _fake_sdist(root: Path) -> Path:
    """The files patch_tree touches, with one defect each."""
    package = root / "detectron2"
    for rel in d2wheel._FIXES:
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("import numpy as np\nx = np.bool\n", encoding="utf-8")
    (package / "data/transforms/transform.py").write_text("y = Image.LINEAR\n", encoding="utf-8")
    (root / "setup.py").write_text("import torch  # builds the C++ extension\n", encoding="utf-8")
    (root / "setup.cfg").write_text("[isort]\n", encoding="utf-8")
    return root


def test_patch_tree_fixes_every_file_and_replaces_setup(tmp_path: Path) -> None:
    root = _fake_sdist(tmp_path)
    changed = d2wheel.patch_tree(root)
    assert sorted(changed) == sorted(d2wheel._FIXES.keys() - {"model_zoo/model_zoo.py"})
    assert "np.bool" not in (root / "detectron2/data/build.py").read_text(encoding="utf-8")
    setup = (root / "setup.py").read_text(encoding="utf-8")
    assert "import torch" not in setup and "ext_modules" not in setup
    assert d2wheel.WHEEL_VERSION in setup and "configs/**/*.yaml" in setup
    assert not (root / "setup.cfg").exists()
    assert (root / "detectron2/_C.py").read_text(encoding="utf-8") == d2wheel.C_STUB


def test_c_stub_imports_and_names_the_missing_op(tmp_path: Path) -> None:
    (tmp_path / "stub_c.py").write_text(d2wheel.C_STUB, encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        import stub_c  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    assert stub_c.has_cuda() is False
    assert "pure-Python" in stub_c.get_compiler_version()
    with pytest.raises(RuntimeError, match="'box_iou_rotated' needs the compiled extension"):
        stub_c.box_iou_rotated(None, None)
    with pytest.raises(AttributeError):
        stub_c.__wrapped__  # noqa: B018


def test_installed_detectron2_is_importable_and_detected() -> None:
    assert d2wheel.detectron2_importable(sys.executable)
    assert d2wheel.ensure_detectron2(sys.executable, Path("/nonexistent")) == (
        "detectron2 already importable: nothing to do")
