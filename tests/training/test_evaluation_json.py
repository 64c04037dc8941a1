"""evaluation.json is strict JSON: a NaN AP (a class without ground truth) becomes null."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import torch

from orchestrator.training.hooks import evaluation_json


def _strict(text: str) -> object:
    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_inf_become_null_and_other_numbers_stay() -> None:
    # the shape COCOEvaluator returns: OrderedDict per task, per-class APs, numpy floats
    results = OrderedDict(bbox={"AP": 12.5, "AP-circle": float("nan"), "AP-star": np.float32(3.5),
                                "APl": np.float64("nan")},
                          segm={"AP": torch.tensor(7.25).item(), "APs": float("inf"),
                                "per_iter": [1, float("-inf"), 2.5]})
    parsed = _strict(evaluation_json(results))
    assert parsed == {"bbox": {"AP": 12.5, "AP-circle": None, "AP-star": 3.5, "APl": None},
                      "segm": {"AP": 7.25, "APs": None, "per_iter": [1, None, 2.5]}}
