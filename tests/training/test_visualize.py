"""Validation images in MLflow: logged at the final evaluation, on schedule, never fatal."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest

from orchestrator.tracking.steps import StepAxis
from orchestrator.training.visualize import VisualizeHook, image_key
from tests.inference.demo import MAX_ITER, VISUALIZE, demo_run

STEP_IMAGE = re.compile(r"^images/(?P<key>.+)\+step\+(?P<step>\d+)\+.*(?<!compressed)\.png$")


def test_the_demo_run_holds_the_validation_images_of_the_final_evaluation(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    demo = demo_run(tmp_path_factory)
    logged = [STEP_IMAGE.match(a.path) for a in demo.client.list_artifacts(demo.run_id, "images")]
    found = {(m["key"], int(m["step"])) for m in logged if m}
    expected = sorted(demo.val_dir.glob("*.png"))[:VISUALIZE]
    assert found == {(image_key(p.name).replace("/", "~"), MAX_ITER) for p in expected}
    assert demo.client.get_run(demo.run_id).data.tags.get("mlflow.loggedImages") == "True"


def test_image_keys_use_only_characters_mlflow_allows() -> None:
    assert image_key("/data/val/000001.png") == "val/000001"
    assert image_key("a b#c.d.jpg") == "val/a b_c.d"


class RecordingHook(VisualizeHook):
    """The real schedule and error handling; drawing replaced by recording (or failing)."""

    def __init__(self, period: int, max_iter: int, test: tuple[str, ...],
                 error: Exception | None = None, axis: StepAxis | None = None) -> None:
        super().__init__(tracking_uri="sqlite:///unused.db", run_id="r", count=2,
                         eval_period=period, axis=axis)
        self.steps: list[int] = []
        self.error = error
        self.trainer = SimpleNamespace(
            iter=0, max_iter=max_iter, cfg=SimpleNamespace(DATASETS=SimpleNamespace(TEST=test)))

    def _visualize(self, step: int) -> None:
        if self.error is not None:
            raise self.error
        self.steps.append(step)


def _train(hook: VisualizeHook, max_iter: int) -> None:
    for hook.trainer.iter in range(max_iter):
        hook.after_step()
    hook.trainer.iter = max_iter  # as detectron2 leaves it after the loop
    hook.after_train()


def test_images_follow_the_evaluation_schedule() -> None:
    hook = RecordingHook(period=4, max_iter=10, test=("val",))
    _train(hook, 10)
    assert hook.steps == [4, 8, 10]
    hook = RecordingHook(period=0, max_iter=10, test=())
    _train(hook, 10)
    assert hook.steps == []  # no test set: no evaluation, no images


def test_images_are_stepped_in_iterations_at_the_reference_batch() -> None:
    hook = RecordingHook(period=4, max_iter=10, test=("val",),
                         axis=StepAxis(batch=4, reference_batch=2))
    _train(hook, 10)
    assert hook.steps == [8, 16, 20]  # twice the iterations done: batch 4 at reference 2


def test_a_failure_is_logged_and_training_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    hook = RecordingHook(period=0, max_iter=3, test=("val",), error=RuntimeError("no images"))
    with caplog.at_level(logging.ERROR, logger="orchestrator.training.visualize"):
        _train(hook, 3)
    assert "no images" in caplog.text and "training continues" in caplog.text
