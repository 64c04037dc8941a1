"""The MLflow UI over our store, looked at in a real (headless) browser: the compare page shows
our runs and an imported one side by side."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from orchestrator.tracking.ui import compare_url, start_ui
from tests.tracking.conftest import Populated

CHROMIUM = Path("/usr/bin/chromium")
# --disable-3d-apis: the page's WebGL parallel-coordinates plot, software-rendered frame by frame
# through the virtual-time budget, takes 80 s idle and hangs on a busy box; without WebGL the
# page renders in ~5 s (that one plot shows "WebGL is not supported"; the tables are intact).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-3d-apis",
         "--virtual-time-budget=15000", "--window-size=1600,2200"]


def need_chromium() -> Path:
    """Install Debian's chromium when missing (CI images); skip if that is impossible."""
    if not CHROMIUM.exists() and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True,
                       check=False, timeout=600)
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium and `apt-get install -y chromium` failed")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chromium(browser: Path, profile: Path, *args: str) -> str:
    done = subprocess.run([str(browser), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_compare_page_shows_our_runs_and_an_imported_one(populated: Populated,
                                                         tmp_path: Path) -> None:
    browser = need_chromium()
    server = start_ui(populated.uri, port=free_port(), log_path=tmp_path / "ui.log")
    try:
        server.wait_ready(timeout=300)  # ~10 s idle; much longer on a busy 2-core box
        url = compare_url(server.url, [populated.w2, populated.w4, populated.d2],
                          [populated.experiment_id])
        shot = tmp_path / "compare.png"
        chromium(browser, tmp_path / "profile", f"--screenshot={shot}", url)
        dom = chromium(browser, tmp_path / "profile", "--dump-dom", url)
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert shot.stat().st_size > 10_000
    assert "Comparing 3 Runs" in dom
    for text in ("w2", "w4", "detectron2_mask_rcnn_R_50_FPN_1x", "bbox/AP", "total_loss"):
        assert re.search(rf">\s*{re.escape(text)}\s*<", dom), f"{text} not shown on {url}"


def test_the_log_goes_beside_the_store_not_the_temporary_folder(tmp_path: Path) -> None:
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("orchestrator-ui-*"))
    store = tmp_path / "project"
    store.mkdir()
    port = free_port()
    server = start_ui(f"sqlite:///{store / 'mlflow.db'}", port=port)
    try:
        assert server.log_path == store / ".orchestrator" / f"ui-{port}.log"
        assert server.log_path.is_file()
    finally:
        server.stop()
    assert set(Path(tempfile.gettempdir()).glob("orchestrator-ui-*")) == before
