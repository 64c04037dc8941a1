"""The data check's cache: reused while nothing it depends on changed, never trusted damaged."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.data import synth
from orchestrator.data.check import CheckReport, check_dataset
from orchestrator.data.check_cache import cache_folder, cached_check, check_key
from tests.conftest import TINY_JOB, write_spec


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> synth.SyntheticSplit:
    return synth.generate(tmp_path_factory.mktemp("synth") / "shapes", num_images=6, size=64,
                          seed=0).train


class Data:
    """A private copy of the synthetic train split, its cache folder, and what was noted."""

    def __init__(self, split: synth.SyntheticSplit, root: Path) -> None:
        self.images = root / "images"
        shutil.copytree(split.image_root, self.images)
        self.json_file = root / "instances.json"
        shutil.copy(split.json_file, self.json_file)
        self.cache = cache_folder(root)
        self.notes: list[str] = []

    def check(self, **kwargs: Any) -> CheckReport:
        self.notes.clear()
        return cached_check(self.json_file, self.images, cache=self.cache,
                            note=self.notes.append, **kwargs)

    def reused(self) -> bool:
        """Whether the last check reused a stored report."""
        return bool(self.notes) and "reusing its result" in self.notes[-1]

    def entry(self) -> Path:
        (entry,) = self.cache.glob("check-*")
        return entry


@pytest.fixture
def data(shapes: synth.SyntheticSplit, tmp_path: Path) -> Data:
    return Data(shapes, tmp_path)


def keep_times(path: Path, change: Callable[[], None]) -> None:
    """Change a file's bytes but give it back its size and modification time."""
    st = path.stat()
    change()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_unchanged_dataset_reuses_the_report_without_reading_an_image(data: Data) -> None:
    fresh = data.check()
    assert not data.reused() and fresh.defects == ()
    assert oct(data.cache.stat().st_mode & 0o777) == "0o700"
    # Garble an image but keep its size and mtime: the cache cannot see it, by design, and a
    # report that still calls it readable proves that no image header was read.
    image = data.images / "000003.png"
    keep_times(image, lambda: image.write_bytes(b"x" * image.stat().st_size))
    again = data.check()
    assert data.reused() and again == fresh
    assert again.format() == fresh.format()
    checked = data.check(reuse=False)
    assert not data.reused() and checked.counts == {"unreadable_image": 1}
    assert data.check() == checked and data.reused()  # --no-cache stored its result


def test_cached_findings_print_exactly_as_fresh_ones(data: Data) -> None:
    doc = json.loads(data.json_file.read_text(encoding="utf-8"))
    doc["images"][0]["width"] = 65
    doc["annotations"][1]["bbox"] = [1.5, True, None, float("nan")]
    doc["annotations"][2]["id"] = "a"
    doc["annotations"][3]["id"] = "a"
    doc["annotations"][4]["image_id"] = [1]
    doc["annotations"][5]["segmentation"] = [[0, 0, 1e308, 1e308, 0.5, 2]]
    doc["categories"][0]["id"] = 0
    data.json_file.write_text(json.dumps(doc), encoding="utf-8")
    fresh = data.check()
    cached = data.check()
    assert data.reused()
    assert cached == fresh and cached.format() == fresh.format() and len(fresh.defects) >= 5
    assert CheckReport.from_dict(json.loads(json.dumps(fresh.to_dict()))) == fresh


def _json_content(data: Data) -> None:
    text = data.json_file.read_text(encoding="utf-8")
    assert '"width":64' in text
    keep_times(data.json_file, lambda: data.json_file.write_text(
        text.replace('"width":64', '"width":46', 1), encoding="utf-8"))


def _image_size(data: Data) -> None:
    with (data.images / "000002.png").open("ab") as f:
        f.write(b"\0")  # after IEND: the same picture, another size


def _image_mtime(data: Data) -> None:
    path = data.images / "000002.png"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))


def _image_name(data: Data) -> None:
    (data.images / "000002.png").rename(data.images / "000002.PNG")


def _new_file(data: Data) -> None:
    (data.images / "extra.png").write_bytes((data.images / "000002.png").read_bytes())


@pytest.mark.parametrize(("change", "kwargs"), [
    (_json_content, {}), (_image_size, {}), (_image_mtime, {}), (_image_name, {}),
    (_new_file, {}), (None, {"decode": True}),
], ids=["json content", "image size", "image mtime", "image name", "new file", "settings"])
def test_any_change_checks_again(data: Data, change: Callable[[Data], None] | None,
                                 kwargs: dict[str, Any]) -> None:
    before = data.check()
    if change is not None:
        change(data)
    after = data.check(**kwargs)
    assert not data.reused()
    assert after == check_dataset(data.json_file, data.images, **kwargs)
    if change in (_json_content, _image_name):
        assert after != before  # and the new findings are there
    data.check(**kwargs)
    assert data.reused()


def test_key_follows_the_check_version(data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    key = check_key(data.json_file, data.images, decode=False)
    monkeypatch.setattr("orchestrator.data.check_cache.CHECK_VERSION", 99)
    assert check_key(data.json_file, data.images, decode=False) != key


def _truncate(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _garble(raw: bytes) -> bytes:
    return raw[:10] + bytes(b ^ 0x55 for b in raw[10:30]) + raw[30:]


def _bad_checksum(raw: bytes) -> bytes:
    body, _, checksum = raw.rstrip(b"\n").rpartition(b"\n")
    return body + b"\n" + checksum[::-1] + b"\n"


def _not_a_report(raw: bytes) -> bytes:
    import hashlib

    body = b'{"defects": 3}'
    return body + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"


def _empty(raw: bytes) -> bytes:
    return b""


@pytest.mark.parametrize("damage", [_truncate, _garble, _bad_checksum, _not_a_report, _empty])
def test_damaged_entry_is_checked_again_with_a_note(data: Data,
                                                    damage: Callable[[bytes], bytes]) -> None:
    fresh = data.check()
    entry = data.entry()
    entry.write_bytes(damage(entry.read_bytes()))
    again = data.check()
    assert again == fresh and not data.reused()
    assert "checking the data again" in data.notes[-1] and str(entry) in data.notes[-1]
    assert data.check() == fresh and data.reused()  # rewritten whole


def test_a_cache_that_cannot_be_written_costs_only_time(data: Data) -> None:
    data.cache.parent.mkdir(parents=True)
    data.cache.write_text("a file where the folder should be", encoding="utf-8")
    report = data.check()
    assert report == check_dataset(data.json_file, data.images)
    assert "cannot store the data check's result" in data.notes[-1]


def test_no_cache_folder_means_no_entries(data: Data) -> None:
    report = cached_check(data.json_file, data.images, cache=None)
    assert report == check_dataset(data.json_file, data.images)
    assert not data.cache.exists()


def test_cli_reuses_the_check_and_no_cache_checks_again(data: Data, workdir: Path) -> None:
    args = ["data", "check", str(data.json_file), "--images", str(data.images)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "reusing" not in first.output, first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "reusing its result" in second.output, second.output
    assert second.output.endswith(first.output.splitlines()[-1] + "\n")
    assert (workdir / ".orchestrator" / "checks").is_dir()
    third = CliRunner().invoke(app, [*args, "--no-cache"])
    assert third.exit_code == 0 and "reusing" not in third.output


def test_submit_and_every_sweep_child_reuse_the_check(data: Data, workdir: Path) -> None:
    spec = TINY_JOB.replace(
        "synthetic: {num_images: 12, size: 64, seed: 1}",
        f"train: {{json_file: {data.json_file}, image_root: {data.images}}}")
    job = write_spec(workdir / "job.yaml", spec)
    first = CliRunner().invoke(app, ["submit", str(job), "--dry-run"])
    assert first.exit_code == 0 and "reusing" not in first.output, first.output
    second = CliRunner().invoke(app, ["submit", str(job), "--dry-run"])
    assert second.exit_code == 0 and "reusing its result" in second.output, second.output
    sweep = write_spec(workdir / "sweep.yaml", spec.replace(
        "solver:", "sweep: {solver.max_iter: [4, 6, 8]}\nsolver:", 1))
    swept = CliRunner().invoke(app, ["submit", str(sweep), "--dry-run"])
    assert swept.exit_code == 0, swept.output
    assert swept.output.count("reusing its result") == 3
