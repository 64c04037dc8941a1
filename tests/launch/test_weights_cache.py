"""A cached weights download that is cut or garbled is removed (detectron2 downloads it
again), with a warning, instead of failing every later submit."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
import torch

from orchestrator.launch.preflight import _cached_download
from orchestrator.launch.weights import check_download


def _checkpoint(path: Path) -> Path:
    if path.suffix == ".pkl":  # detectron2 zoo layout
        with path.open("wb") as f:
            pickle.dump({"model": {"w": torch.zeros(64, 64).numpy()}, "__author__": "t"}, f)
    else:
        torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
    return path


@pytest.mark.parametrize("name", ["R-50.pkl", "model_final.pth"])
def test_a_cut_download_never_read_is_removed_with_a_warning(tmp_path: Path, name: str) -> None:
    path = _checkpoint(tmp_path / name)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a download cut short
    warning = check_download(path)
    assert warning is not None and str(path) in warning and "downloaded again" in warning
    assert not path.exists()


def test_a_good_download_is_recorded_and_a_later_change_is_found(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "model_final.pth")
    assert check_download(path) is None
    record = tmp_path / ".model_final.pth.record.json"
    assert record.is_file()
    assert check_download(path) is None and path.exists()
    time.sleep(0.05)  # damage comes later than the write: a new modification time
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # garbled in place, same size
    path.write_bytes(bytes(data))
    warning = check_download(path)
    assert warning is not None and "checksum" in warning
    assert not path.exists() and not record.exists()


def test_the_check_looks_where_detectron2_caches_downloads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    url = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    assert _cached_download(url) is None
    cached = tmp_path / "detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    cached.parent.mkdir(parents=True)
    _checkpoint(cached)
    assert _cached_download(url) == cached
