"""A real ``orchestrator submit`` in its own process group, and what its process tree does."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.conftest import REPO


def start_submit(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m orchestrator submit ARGS`` as a shell would start it: its own process
    group (so the group can be signalled as a terminal's Ctrl-C does), output merged."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                            os.environ.get("PYTHONPATH")])),
                **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", *args],
                            cwd=workdir, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def read_until(proc: subprocess.Popen, done: Callable[[str], bool], timeout: float) -> str:
    """Output lines until one satisfies ``done`` (or the process ends / time runs out)."""
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if done(line) or time.monotonic() > deadline:
            break
    return "".join(seen)


@dataclass
class Listener:
    pid: int
    name: str
    ip: str
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.ip.removeprefix("::ffff:")).is_loopback


@dataclass
class TreeWatch:
    """Polls a process tree while it runs: every listening socket, and each process's
    environment (as the kernel shows it)."""

    root: int
    listeners: dict[tuple[int, str, int], Listener] = field(default_factory=dict)
    environs: dict[int, dict[str, str]] = field(default_factory=dict)
    names: dict[int, set[str]] = field(default_factory=dict)  # titles change (ray::IDLE...)

    def poll(self) -> None:
        try:
            top = psutil.Process(self.root)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                name = proc.name()
                self.names.setdefault(proc.pid, set()).add(name)
                self.environs[proc.pid] = proc.environ()  # the latest exec's
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        key = (proc.pid, conn.laddr.ip, conn.laddr.port)
                        self.listeners.setdefault(key, Listener(proc.pid, name, *key[1:]))
            except psutil.Error:  # gone meanwhile
                continue

    def follow(self, proc: subprocess.Popen, timeout: float, every: float = 0.3) -> str:
        """Poll until ``proc`` ends (its output read by a thread meanwhile); returns the
        output."""
        assert proc.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            self.poll()
            time.sleep(every)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        reader.join(timeout=60)
        proc.stdout.close()
        return "".join(lines)
