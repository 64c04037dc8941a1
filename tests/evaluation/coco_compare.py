"""How scores are compared with pycocotools' in these tests: equal as printed, and closer.

faster-coco-eval's precision at a first true positive is ``1 / 1`` where pycocotools computes
``1 / (1 + 2**-52)``, so an AP can differ from pycocotools' in its last bit (1e-14 percent);
everything detectron2 prints (``%.3f`` tables, ``%.4f`` copypaste lines) is equal.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ULP_1 = 1 / (1 + np.spacing(1))  # pycocotools' precision of a first true positive


def assert_same_printed(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Results dicts (``{task: {metric: percent}}``) equal to the last printed digit."""
    assert got.keys() == expected.keys()
    for task, values in expected.items():
        assert got[task].keys() == values.keys(), task
        for key, value in values.items():
            mine = got[task][key]
            if math.isnan(value):
                assert math.isnan(mine), (task, key, mine)
                continue
            assert abs(mine - value) <= 1e-9, (task, key, mine, value)
            assert f"{mine:.4f}" == f"{value:.4f}", (task, key, mine, value)


def assert_same_precision(mine: np.ndarray, reference: np.ndarray) -> int:
    """Precision arrays equal but where pycocotools has ``ULP_1`` and faster-coco-eval 1.0;
    returns how many entries are so."""
    assert mine.shape == reference.shape
    differ = mine != reference
    assert np.all((mine[differ] == 1.0) & (reference[differ] == ULP_1))
    return int(differ.sum())
