"""``orchestrator runs import|compare`` and ``ui`` through Typer's runner: exit codes, output."""

from __future__ import annotations

import socket
from pathlib import Path

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.tracking.conftest import MMDET_LOG, Populated, need_reference_logs

runner = CliRunner()


def test_runs_import_prints_the_run_id(store: str, workdir: Path) -> None:
    need_reference_logs()
    result = runner.invoke(app, ["runs", "import", str(MMDET_LOG), "--name", "mm",
                                 "--iters-per-epoch", "7000", "--batch", "8",
                                 "--reference-batch", "16"])  # default store: ./mlflow.db
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(result.output.strip())
    assert run.info.run_name == "mm"
    assert run.data.params["iters_per_epoch"] == "7000"
    assert (run.data.params["total_batch"], run.data.params["reference_batch"]) == ("8", "16")
    # Epoch 6's evaluation (its record's iter is 7330): 5 x 7000 + 7330 iterations done at
    # batch 8 are 21165 at the reference batch 16, the last of them step 21164.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "segm/AP")] == [21164]


def test_runs_import_of_bad_content_exits_2_naming_file_and_line(workdir: Path) -> None:
    bad = workdir / "log.json"
    bad.write_text('{"iteration": 1}\n{oops\n', encoding="utf-8")
    result = runner.invoke(app, ["runs", "import", str(bad)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert f"{bad}:2: not a JSON line" in " ".join(result.output.split())


def test_runs_compare_shows_tables_and_writes_the_plot(populated: Populated,
                                                       tmp_path: Path) -> None:
    plot = tmp_path / "cmp.png"
    result = runner.invoke(app, ["runs", "compare", "w2", "w4", populated.d2,
                                 "--tracking-uri", populated.uri, "--plot", str(plot)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("params that differ", "workers", "segm/AP", "35.24", "11.00 (14.00)"):
        assert text in result.output
    assert plot.stat().st_size > 0


def test_runs_compare_unknown_run_exits_2(populated: Populated) -> None:
    result = runner.invoke(app, ["runs", "compare", "ghost", "--tracking-uri", populated.uri])
    assert result.exit_code == 2
    assert "no run with id or name 'ghost'" in result.output


def test_ui_on_a_busy_port_exits_2(workdir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["ui", "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.output
