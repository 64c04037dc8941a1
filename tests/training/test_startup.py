"""The worker's start-up breakdown: phases add up, and the first one starts at process birth."""

from __future__ import annotations

import logging
import re
import time

import psutil
import pytest

from orchestrator.training.startup import StartupClock


def test_phases_add_up_from_the_process_start(caplog: pytest.LogCaptureFixture) -> None:
    entered = time.time()
    clock = StartupClock(entered)
    time.sleep(0.05)
    clock.mark("imports")
    clock.mark("cfg")
    names = [name for name, _ in clock.phases]
    assert names == ["process", "imports", "cfg"]
    born = psutil.Process().create_time()
    assert clock.phases[0][1] == pytest.approx(entered - born, abs=0.01)
    assert clock.phases[1][1] >= 0.05
    assert clock.total() == pytest.approx(time.time() - born, abs=0.05)
    with caplog.at_level(logging.INFO, logger="orchestrator.worker"):
        clock.log()
    line = caplog.records[-1].getMessage()
    found = re.fullmatch(r"worker start-up took ([\d.]+) s: process [\d.]+ s, imports "
                         r"([\d.]+) s, cfg [\d.]+ s", line)
    assert found, line
    assert float(found.group(2)) >= 0.05
