"""A Ray cluster of several nodes on this machine, to rehearse the cluster path for free.

One supervisor process (``orchestrator cluster up``) runs a head and worker nodes with
``ray.cluster_utils.Cluster``: each node is a real raylet with its own node id, ports and CPU
count, all on 127.0.0.1. (Plain ``ray start`` cannot do that: Ray 2.60 rewrites a worker's
``--address 127.0.0.1:PORT`` into the machine's routable address, where a 127.0.0.1 head does
not listen.) The supervisor writes a state file naming every node's processes, so a node can
be killed outright by pid to simulate a lost machine, and stops its nodes by pid on SIGTERM or
Ctrl-C. ``ray stop`` is never used: it would kill every Ray on the machine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, JobFailedError
from orchestrator.integrity import locked

__all__ = ["GCS_LIVENESS", "ClusterProcess", "LocalCluster", "check_arguments",
           "drain_for_preemption", "free_port", "kill_node", "node_processes", "preempt_node",
           "read_state", "serve", "stop_from_state"]

LOCALHOST = "127.0.0.1"
# For the nodes and every process that joins them: quiet, no token auth (the cluster listens
# on 127.0.0.1 only), and 127.0.0.1 kept as it is: Ray otherwise rewrites a 127.0.0.1 cluster
# address into the machine's routable one, where nothing listens (that switch is Ray's
# "single-host cluster" mode; it only refuses `ray start` of worker nodes, unused here).
NODE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# The GCS declares a node dead after this many failed health checks this far apart: 5 x 1 s
# instead of Ray's 5 x 3 s. A killed raylet refuses the check at once, so a lost node is known
# in about 5 s; a live but busy one still has 10 s per check to answer. Until then Ray Train
# sizes a restart for the lost node too (docs/faults.md: "Restart time after a node loss").
GCS_LIVENESS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def _proc_table() -> dict[int, int]:
    """pid -> parent pid for every living process, from /proc (zombies, killed but not yet
    reaped by their parent, are dead)."""
    table: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, parent = stat.rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                table[int(entry.name)] = int(parent)
    return table


def node_processes(pids: list[int]) -> list[int]:
    """``pids`` and all their living descendants (a raylet's Ray workers and agents)."""
    table = _proc_table()
    found = {p for p in pids if p in table}
    while True:
        children = {p for p, parent in table.items() if parent in found} - found
        if not children:
            return sorted(found)
        found |= children


def check_arguments(nodes: int, cpus_per_node: float) -> None:
    """Refuse a cluster Ray would start and never use (no CPU to place a task on), or never
    start, before any process exists."""
    if nodes < 1:
        raise InputError(f"--nodes: {nodes} is not a node count (1 or more)")
    if not (math.isfinite(cpus_per_node) and cpus_per_node >= 1):
        raise InputError(f"--cpus-per-node: {cpus_per_node:g} CPUs cannot run a worker; give "
                         "1 or more")


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _node_args(cpus: float, object_store_mib: int, temp_dir: str) -> dict[str, Any]:
    """Every port chosen here, so two local clusters (or another Ray) never collide."""
    return {
        "node_ip_address": LOCALHOST, "num_cpus": cpus, "temp_dir": temp_dir,
        "object_store_memory": object_store_mib * 2**20,
        "node_manager_port": free_port(), "object_manager_port": free_port(),
        "metrics_export_port": free_port(), "metrics_agent_port": free_port(),
        "runtime_env_agent_port": free_port(), "dashboard_agent_listen_port": free_port(),
    }


def _retried(start: Callable[[], Any], attempts: int = 3) -> Any:
    """Ray gives a new raylet 30 s to register with the GCS, which a busy machine can miss:
    the half-started node's processes are killed and it is started again."""
    for attempt in range(attempts):
        before = set(node_processes([os.getpid()]))
        try:
            return start()
        except Exception:
            _signal_all(sorted(set(node_processes([os.getpid()])) - before), signal.SIGKILL)
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


@dataclass
class LocalCluster:
    """The nodes themselves, owned by this process (the supervisor)."""

    cpus_per_node: float = 1
    object_store_mib: int = 128
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[tuple[str, Any]] = field(default_factory=list)
    _cluster: Any = None

    @property
    def address(self) -> str:
        """The Jobs API URL, as ``submit --address`` takes it."""
        return f"http://{LOCALHOST}:{self.dashboard_port}"

    @property
    def ray_temp_dir(self) -> str:
        return os.path.join(self.temp_dir, "ray")

    @property
    def gcs_address(self) -> str:
        """The cluster address, as ``ray.init`` / ``RAY_ADDRESS`` take it."""
        return str(self._cluster.gcs_address)

    def start(self, nodes: int) -> LocalCluster:
        check_arguments(nodes, self.cpus_per_node)
        from ray.cluster_utils import Cluster

        os.environ.update(NODE_ENV)  # before Ray reads its constants
        # Ray's default temp dir inside ours: Ray records "the current cluster" there (job
        # drivers find their cluster by it), not in /tmp/ray, which other Rays here share.
        os.environ["RAY_TMPDIR"] = self.temp_dir
        # Job entrypoints run `python` from PATH: make it this environment's, as on a head
        # installed with `make env`.
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        head = {**_node_args(self.cpus_per_node, self.object_store_mib, self.ray_temp_dir),
                "include_dashboard": True, "dashboard_host": LOCALHOST,
                "dashboard_port": self.dashboard_port, "ray_client_server_port": free_port(),
                "_system_config": GCS_LIVENESS}
        self._cluster = Cluster(initialize_head=False, shutdown_at_exit=True)
        self.nodes.append(("head", _retried(lambda: self._cluster.add_node(**head))))
        for _ in range(nodes - 1):
            self.add_node()
        return self

    def add_node(self) -> str:
        """One more worker node; returns its name."""
        name = f"worker-{len(self.nodes)}"
        # Its own temp dir, as on a machine of its own: nodes sharing one would unpack job
        # working dirs (runtime envs) over each other's.
        temp = os.path.join(self.temp_dir, name)
        self.nodes.append((name, _retried(lambda: self._cluster.add_node(**_node_args(
            self.cpus_per_node, self.object_store_mib, temp)))))
        return name

    def state(self) -> dict[str, Any]:
        """What other processes need: addresses, and each node's id and process ids."""
        return {
            "supervisor": os.getpid(), "address": self.address,
            "gcs_address": self.gcs_address, "temp_dir": self.temp_dir,
            "nodes": [{"name": name, "node_id": node.node_id,
                       "pids": sorted(info.process.pid for infos in node.all_processes.values()
                                      for info in infos)}
                      for name, node in self.nodes],
        }

    def stop(self) -> None:
        """Every node's processes, by pid (nodes killed from outside are skipped quietly)."""
        if self._cluster is not None:
            pids = [p for n in self.state()["nodes"] for p in n["pids"]]
            try:
                self._cluster.shutdown()
            except Exception:  # noqa: BLE001 - a node was killed already: kill what is left
                _signal_all(node_processes(pids), signal.SIGKILL)
            self._cluster = None
        # Anything of ours still running (a node that failed to start, orphans of a kill).
        _signal_all([p for p in node_processes([os.getpid()]) if p != os.getpid()],
                    signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _lock(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    tmp.replace(path)


def _update_state(path: Path, state: dict[str, Any]) -> None:
    """The supervisor's new state, keeping the nodes that ``kill_node`` marked killed."""
    with locked(_lock(path)):
        killed = set()
        if path.exists():
            killed = {n["name"] for n in read_state(path)["nodes"] if n.get("killed")}
        for node in state["nodes"]:
            if node["name"] in killed:
                node["killed"] = True
        _write_state(path, state)


def kill_node(path: Path, name: str, *, gone_ok: bool = False) -> int:
    """SIGKILL every process of node ``name`` at once (a machine lost) and mark it killed in
    the state file; returns how many processes. A node killed already is bad input, unless
    ``gone_ok`` (a drained node's raylet exits by itself once it is idle)."""
    with locked(_lock(path)):
        state = read_state(path)
        nodes = _nodes_by_name(state, name)
        alive = [n for n, node in nodes.items() if not node.get("killed")]
        pids = node_processes(nodes[name]["pids"])
        if nodes[name].get("killed") or not pids:
            nodes[name]["killed"] = True
            _write_state(path, state)
            if gone_ok:
                return 0
            raise InputError(f"{name}: killed already (nodes up: {', '.join(alive) or 'none'})")
        _signal_all(pids, signal.SIGKILL)
        nodes[name]["killed"] = True
        _write_state(path, state)
    return len(pids)


def _nodes_by_name(state: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The state's node records by name; asking for an unknown ``name`` is bad input."""
    nodes = {n["name"]: n for n in state["nodes"]}
    if name not in nodes:
        raise InputError(f"{name}: no such node (nodes: {', '.join(nodes)})")
    return nodes


def _living_node(path: Path, name: str) -> dict[str, Any]:
    """The state file's record of node ``name``; an unknown or killed node is bad input."""
    state = read_state(path)
    nodes = _nodes_by_name(state, name)
    if nodes[name].get("killed") or not node_processes(nodes[name]["pids"]):
        raise InputError(f"{name}: killed already")
    return {**nodes[name], "gcs_address": state["gcs_address"]}


def drain_for_preemption(gcs_address: str, node_id: str, deadline_s: int) -> None:
    """Ask the GCS to drain a node for preemption with a deadline, as a cloud autoscaler does
    when a spot machine is reclaimed: Ray stops placing work there, and Ray Train's watcher
    tells the training function (``ray.train.get_preemption_info``). Through ``ray
    drain-node``, Ray's public way to make that request."""
    ray_cli = Path(sys.executable).with_name("ray")
    cmd = [str(ray_cli), "drain-node", f"--address={gcs_address}", f"--node-id={node_id}",
           "--reason=DRAIN_NODE_REASON_PREEMPTION",
           "--reason-message=orchestrator cluster preempt (rehearsed spot reclaim)",
           f"--deadline-remaining-seconds={deadline_s}"]
    done = subprocess.run(cmd, env={**os.environ, **NODE_ENV}, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise JobFailedError(f"ray drain-node refused: {(done.stderr or done.stdout).strip()}")


def preempt_node(path: Path, name: str, deadline_s: int,
                 on_drained: Callable[[float], None] | None = None,
                 drain: Callable[[str, str, int], None] = drain_for_preemption) -> int:
    """Node ``name`` drained for preemption now and killed (as ``kill_node``) ``deadline_s``
    seconds later: a spot reclaim with its notice. ``on_drained`` gets the kill's time (epoch
    seconds); ``drain`` makes the request (tests pass their own). Returns how many processes
    were killed."""
    if deadline_s < 1:
        raise InputError(f"--deadline: {deadline_s} s leaves no time to save; give 1 or more")
    node = _living_node(path, name)
    drain(node["gcs_address"], node["node_id"], deadline_s)
    kill_at = time.time() + deadline_s
    if on_drained is not None:
        on_drained(kill_at)
    time.sleep(max(0.0, kill_at - time.time()))
    # Ray Train restarts the group at the deadline, and a drained raylet left idle exits:
    # the node may be gone already.
    return kill_node(path, name, gone_ok=True)


def serve(nodes: int, *, cpus_per_node: float, state_path: Path,
          on_ready: Callable[[LocalCluster], None] | None = None) -> None:
    """Run the cluster until SIGTERM or Ctrl-C; SIGUSR1 adds a worker node. The state file
    exists exactly while the cluster is up."""
    cluster = LocalCluster(cpus_per_node=cpus_per_node)
    added: list[int] = []

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGUSR1, lambda signum, frame: added.append(signum))
    try:
        cluster.start(nodes)
        _update_state(state_path, cluster.state())
        if on_ready:
            on_ready(cluster)
        while True:
            if added:
                added.clear()
                cluster.add_node()
                _update_state(state_path, cluster.state())
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan nodes
        state_path.unlink(missing_ok=True)
        _lock(state_path).unlink(missing_ok=True)
        cluster.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def read_state(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise InputError(f"{path}: no local cluster is recorded there (start one with "
                         "`orchestrator cluster up`)") from None


def _is_supervisor(pid: int) -> bool:
    """Still our ``cluster up`` process (not a stranger that reused the pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"orchestrator" in cmdline and b"cluster" in cmdline


def stop_from_state(state: dict[str, Any], timeout: float = 60) -> bool:
    """Stop a cluster from another process: SIGTERM its supervisor (which stops every node),
    then SIGKILL any recorded node process still alive. False if it was gone already."""
    pid = int(state["supervisor"])
    alive = _is_supervisor(pid)
    if alive:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_supervisor(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    pids = [p for node in state["nodes"] for p in node["pids"]]
    _signal_all(node_processes(pids), signal.SIGKILL)
    shutil.rmtree(state.get("temp_dir", ""), ignore_errors=True)
    return alive


@dataclass
class ClusterProcess:
    """``orchestrator cluster up`` as a child process, driven by pid: for tests, benchmarks
    and ``cluster up --detach``."""

    state_path: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, nodes: int, *, cpus_per_node: float = 1, state_path: Path,
              log_path: Path | None = None, timeout: float = 180) -> ClusterProcess:
        check_arguments(nodes, cpus_per_node)
        env = {**os.environ, **NODE_ENV}
        if log_path:  # e.g. .orchestrator/ in a folder that has none yet
            log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        cmd = [sys.executable, "-m", "orchestrator", "cluster", "up", f"--nodes={nodes}",
               f"--cpus-per-node={cpus_per_node:g}", f"--state={state_path}"]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        if log_path:
            log.close()  # type: ignore[union-attr]
        cluster = cls(state_path=state_path, proc=proc)
        try:
            cluster.wait_for(lambda s: len(s["nodes"]) >= nodes, timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def state(self) -> dict[str, Any]:
        return read_state(self.state_path)

    @property
    def address(self) -> str:
        return str(self.state()["address"])

    @property
    def gcs_address(self) -> str:
        return str(self.state()["gcs_address"])

    def wait_for(self, ready: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise JobFailedError(f"the local cluster exited with {self.proc.returncode}")
            if self.state_path.exists() and ready(self.state()):
                return
            time.sleep(0.5)
        raise JobFailedError(f"the local cluster was not ready after {timeout:g}s")

    def add_node(self, timeout: float = 120) -> str:
        count = len(self.state()["nodes"])
        os.kill(self.proc.pid, signal.SIGUSR1)
        self.wait_for(lambda s: len(s["nodes"]) > count, timeout)
        return str(self.state()["nodes"][-1]["name"])

    def node_pids(self, name: str) -> list[int]:
        """The node's processes now: its raylet and agents plus the Ray workers under them."""
        for node in self.state()["nodes"]:
            if node["name"] == name:
                return node_processes(node["pids"])
        raise KeyError(name)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of a node at once: a machine lost, nothing shuts down."""
        pids = self.node_pids(name)
        _signal_all(pids, signal.SIGKILL)
        return pids

    def kill_every_node(self) -> list[int]:
        """SIGKILL every process of every node, head included, in one go: the whole cluster
        lost at once (a zone outage), nothing shuts down. The supervisor stays, to be stopped."""
        pids = node_processes([p for n in self.state()["nodes"] for p in n["pids"]])
        _signal_all(pids, signal.SIGKILL)
        return pids

    def stop(self, timeout: float = 90) -> None:
        state = self.state() if self.state_path.exists() else None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if state:  # whatever survived its supervisor
            _signal_all(node_processes([p for n in state["nodes"] for p in n["pids"]]),
                        signal.SIGKILL)
            shutil.rmtree(state["temp_dir"], ignore_errors=True)
        self.state_path.unlink(missing_ok=True)

    def __enter__(self) -> ClusterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
