"""Panoptic fields of the job spec: all-or-none rules, errors that name the field, defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.errors import InputError
from orchestrator.spec import DatasetSpec, default_stuff_root, parse_spec
from tests.conftest import TINY_JOB


def _spec(train: dict[str, Any] | None = None, **synthetic: Any) -> Any:
    raw = yaml.safe_load(TINY_JOB)
    if train is not None:
        raw["data"] = {"train": train}
    raw["data"].get("synthetic", {}).update(synthetic)
    return parse_spec(raw, source="job.yaml")


FILES = {"json_file": "ann.json", "image_root": "imgs"}


@pytest.mark.parametrize(("train", "message"), [
    ({**FILES, "panoptic_json": "pan.json"},
     "data.train: Value error, panoptic_root is missing: a panoptic dataset needs both"),
    ({**FILES, "panoptic_root": "pan"}, "data.train: Value error, panoptic_json is missing"),
    ({**FILES, "sem_seg_root": "stuff"}, "data.train: Value error, panoptic_json is missing"),
    ({"name": "coco_2017_train", "panoptic_json": "p.json", "panoptic_root": "p"},
     "data.train: Value error, panoptic_json, panoptic_root: only with json_file + image_root"),
    ({**FILES, "panoptic_jsn": "p.json"}, "data.train.panoptic_jsn: unknown key (did you mean "
     "'panoptic_json'?)"),
])
def test_panoptic_field_errors_name_the_field(train: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as caught:
        _spec(train)
    assert message in str(caught.value)


def test_sem_seg_root_defaults_beside_the_panoptic_root() -> None:
    spec = _spec({**FILES, "panoptic_json": "a/panoptic_train2017.json",
                  "panoptic_root": "a/panoptic_train2017"})
    assert spec.data.train.stuff_root == Path("a/panoptic_stuff_train2017")
    assert default_stuff_root(Path("/d/segments")) == Path("/d/segments_stuff")
    given = DatasetSpec(**FILES, panoptic_json="p.json", panoptic_root="p", sem_seg_root="s")
    assert given.stuff_root == Path("s")
    assert DatasetSpec(**FILES).stuff_root is None


@pytest.mark.parametrize("value", [-1, 9, 2.0, True])
def test_synthetic_stuff_classes_range(value: Any) -> None:
    with pytest.raises(InputError, match="data.synthetic.stuff_classes"):
        _spec(stuff_classes=value)
    assert _spec().data.synthetic.stuff_classes == 0
    assert _spec(stuff_classes=3).data.synthetic.stuff_classes == 3
