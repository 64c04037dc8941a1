"""Build and install a pure-Python detectron2 wheel from the ``pb1-detectron2==0.6`` sdist.

detectron2 publishes no wheels and GitHub may be out of reach, so the only installable source is
the ``pb1-detectron2`` republication on PyPI. It ships without the C++ sources, points its
``package_data`` at a folder it does not contain and uses APIs that numpy 2, Pillow 10+ and
setuptools 81+ removed. This module downloads that sdist (hash-pinned), applies the few textual
fixes needed, replaces ``setup.py`` with one that builds no extension, and installs the wheel.

It uses the standard library only, so it runs before anything else is installed::

    python -m orchestrator.install.d2wheel --python .venv/bin/python

The step is skipped when the target interpreter already imports detectron2, so a user with a real
upstream build (compiled ops and all) keeps it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "SDIST_NAME",
    "SDIST_SHA256",
    "WHEEL_VERSION",
    "C_STUB",
    "fix_numpy_aliases",
    "fix_pillow_linear",
    "fix_pkg_resources",
    "patch_tree",
    "detectron2_importable",
    "ensure_detectron2",
]

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_VERSION = "0.6+nocsrc.patched"
DEFAULT_INDEX = "https://pypi.org/simple"

# Runtime requirements of detectron2 0.6 minus black (only used to pretty-print LazyConfig files,
# and its pin drags pathspec<1), future and pydot (caffe2 export only); plus opencv, which
# detectron2's visualizer imports without declaring it.
REQUIREMENTS = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "opencv-python-headless",
]

# The compiled ops are absent: importing works, calling one says which op is missing.
C_STUB = '''"""Stand-in for detectron2's compiled extension (pure-Python build by orchestrator).

Rotated boxes, deformable convolution and the C++ COCO evaluator need the real extension;
everything else in detectron2 is Python and works without it.
"""


def get_compiler_version():
    return "none (pure-Python build)"


def get_cuda_version():
    return "none (pure-Python build)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise RuntimeError(
            f"detectron2 op '{name}' needs the compiled extension detectron2._C, which this "
            "pure-Python build does not have. Install detectron2 from source to use it."
        )

    return _missing
'''

SETUP_PY = '''from setuptools import find_packages, setup

setup(
    name="pb1-detectron2",
    version={version!r},
    description="detectron2 0.6, pure-Python build (no compiled ops), for numpy 2/Pillow 10+",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    include_package_data=False,
    python_requires=">=3.8",
    install_requires={requirements!r},
)
'''

_NUMPY_ALIASES = {"bool": "bool", "float": "float", "int": "int", "str": "str"}


def fix_numpy_aliases(text: str) -> str:
    """Replace ``np.bool``/``np.float``/``np.int``/``np.str`` (removed in numpy 1.24) by builtins.

    ``np.bool_``, ``np.float32`` and friends are left alone.
    """
    pattern = re.compile(r"\bnp\.(bool|float|int|str)\b(?!_)")
    return pattern.sub(lambda m: _NUMPY_ALIASES[m.group(1)], text)


def fix_pillow_linear(text: str) -> str:
    """``Image.LINEAR`` was an alias of ``Image.BILINEAR`` removed in Pillow 10."""
    return re.sub(r"\bImage\.LINEAR\b", "Image.BILINEAR", text)


def fix_pkg_resources(text: str) -> str:
    """Use ``importlib.resources`` where model_zoo used ``pkg_resources`` (gone in setuptools
    81)."""
    text = text.replace("import pkg_resources\n", "import importlib.resources\n")
    return re.sub(
        r"pkg_resources\.resource_filename\(\s*\"detectron2\.model_zoo\",\s*",
        'os.path.join(str(importlib.resources.files("detectron2.model_zoo")), ',
        text,
    )


_FIXES: dict[str, Callable[[str], str]] = {
    "data/build.py": fix_numpy_aliases,
    "structures/masks.py": fix_numpy_aliases,
    "evaluation/sem_seg_evaluation.py": fix_numpy_aliases,
    "evaluation/pascal_voc_evaluation.py": fix_numpy_aliases,
    "data/datasets/pascal_voc.py": fix_numpy_aliases,
    "utils/visualizer.py": fix_numpy_aliases,
    "utils/video_visualizer.py": fix_numpy_aliases,
    "data/transforms/transform.py": fix_pillow_linear,
    "model_zoo/model_zoo.py": fix_pkg_resources,
}


def patch_tree(src_root: Path) -> list[str]:
    """Apply every fix to an unpacked sdist in place and return the files that changed."""
    package = src_root / "detectron2"
    changed = []
    for rel, fix in _FIXES.items():
        path = package / rel
        old = path.read_text(encoding="utf-8")
        new = fix(old)
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed.append(rel)
    (package / "_C.py").write_text(C_STUB, encoding="utf-8")
    setup = SETUP_PY.format(version=WHEEL_VERSION, requirements=REQUIREMENTS)
    (src_root / "setup.py").write_text(setup, encoding="utf-8")
    for stale in ("setup.cfg", "pyproject.toml"):
        (src_root / stale).unlink(missing_ok=True)
    return changed


def detectron2_importable(python: str) -> bool:
    """True when ``python`` imports detectron2 and its engine (any build, ours or upstream)."""
    probe = "import detectron2, detectron2.engine, detectron2.model_zoo"
    result = subprocess.run([python, "-c", probe], capture_output=True, check=False)
    return result.returncode == 0


def _sdist_url(index: str) -> str:
    """Look the sdist up through the PEP 691 JSON simple API of ``index``."""
    request = urllib.request.Request(
        f"{index.rstrip('/')}/pb1-detectron2/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if entry["filename"] == SDIST_NAME:
            return str(entry["url"])
    raise RuntimeError(f"{SDIST_NAME} is not listed on {index}")


def fetch_sdist(cache_dir: Path, index: str = DEFAULT_INDEX) -> Path:
    """Download the sdist once into ``cache_dir`` and check its pinned sha256."""
    target = cache_dir / SDIST_NAME
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        with urllib.request.urlopen(_sdist_url(index), timeout=300) as response:
            partial.write_bytes(response.read())
        partial.replace(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        target.unlink()
        raise RuntimeError(f"{SDIST_NAME}: sha256 {digest} does not match {SDIST_SHA256}")
    return target


def build_wheel(python: str, sdist: Path, wheel_dir: Path) -> Path:
    """Unpack, patch and build the wheel with the target interpreter's pip."""
    with tempfile.TemporaryDirectory(prefix="d2build-") as tmp:
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        src_root = Path(tmp) / "pb1-detectron2-0.6"
        patch_tree(src_root)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [python, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps"]
        subprocess.run([*cmd, "-w", str(wheel_dir), str(src_root)], check=True)
    wheels = sorted(wheel_dir.glob("pb1_detectron2-0.6+nocsrc.patched-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel produced no detectron2 wheel in {wheel_dir}")
    return wheels[-1]


def ensure_detectron2(python: str, cache_dir: Path, index: str = DEFAULT_INDEX) -> str:
    """Install detectron2 into ``python``'s environment unless it already imports one."""
    if detectron2_importable(python):
        return "detectron2 already importable: nothing to do"
    wheel = build_wheel(python, fetch_sdist(cache_dir, index), cache_dir / "wheels")
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)
    if not detectron2_importable(python):
        raise RuntimeError(f"installed {wheel.name} but detectron2 still does not import")
    return f"installed {wheel.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to install into")
    parser.add_argument("--cache", type=Path, default=Path(".cache/detectron2"))
    parser.add_argument("--index", default=os.environ.get("ORCHESTRATOR_D2_INDEX", DEFAULT_INDEX))
    args = parser.parse_args(argv)
    try:
        print(ensure_detectron2(args.python, args.cache, args.index))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: could not install detectron2: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
