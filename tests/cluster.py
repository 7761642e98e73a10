"""A real multi-node Ray cluster on this machine for tests: `ray start` processes, the Jobs API on.

Each node is its own `ray start --block` process in its own session, with its own temp dir and
environment; on exit each node's process group is ended (SIGTERM, then SIGKILL), never `ray stop`,
which would end every Ray process of the user, the test session's local runtime included.

    with local_cluster(num_nodes=2) as cluster:
        JobSubmissionClient(cluster.dashboard_url).submit_job(...)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
CACHE_ENV = "LMFORGE_CACHE_DIR"
VENV_BIN = Path(sys.executable).parent
# Every port a node binds, so that nodes (and clusters of concurrent test sessions) never collide on
# a default (the dashboard agent's 52365, the client server's 10001, ...).
NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
)
HEAD_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port")


@dataclass
class RayNode:
    process: subprocess.Popen
    temp_dir: Path
    log_path: Path

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to `ray start --block`, which then stops the processes it started (1-3 s here); what
        is left of the node's process group after `timeout` gets SIGKILL, as `ray stop --force` does.
        (A head node that ran jobs may not finish its own SIGTERM shutdown within 15 s; SIGTERM to the
        whole group at once is slower still: `ray start` waits ~30 s for every process.)"""
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        if not _wait_gone(self.process, timeout):
            remaining = len(_group_commands(self.process.pid))
            print(
                f"ray node {self.temp_dir.name}: {remaining} processes left after SIGTERM: SIGKILL",
                file=sys.stderr,
            )
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            _wait_gone(self.process, 5.0)
        # Agents the node started late (dashboard and runtime-env agents) can outlive a clean
        # shutdown in the group, holding ports and memory: nothing of a stopped node may remain.
        time.sleep(0.5)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _wait_gone(process: subprocess.Popen, timeout: float) -> bool:
    """Whether the node's `ray start` process and every process of its group ended within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None and not _group_alive(process.pid):
            return True
        time.sleep(0.2)
    return False


@dataclass
class LocalCluster:
    gcs_address: str
    dashboard_url: str
    nodes: list[RayNode] = field(default_factory=list)

    def log_tail(self, num_chars: int = 4000) -> str:
        """The end of each node's `ray start` output, for failure messages."""
        return "\n".join(
            f"--- {node.log_path}:\n{node.log_path.read_text(errors='replace')[-num_chars:]}"
            for node in self.nodes
        )


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on the loopback interface now (held together while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def node_environment(extra: Mapping[str, str] | None = None, auth_mode: str = "disabled") -> dict[str, str]:
    """This process's environment with the venv's bin first on PATH (a job's `python` is ours), Ray's
    usage reporting off, and token authentication as `auth_mode` says.

    Ray 2.60 turns token authentication on for `ray start --head` whenever ~/.ray/auth_token exists
    (any local `ray.init` writes it); then a Jobs API client needs RAY_AUTH_MODE=token too. Tests
    choose the mode explicitly instead of depending on that file.
    """
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "LMFORGE_RAY_ADDRESS"):
        env.pop(name, None)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = auth_mode
    env.update(extra or {})
    return env


@contextmanager
def local_cluster(
    num_nodes: int = 2,
    num_cpus: int = 1,
    object_store_bytes: int = 200 * 1024**2,
    node_env: Mapping[str, str] | None = None,
    auth_mode: str = "disabled",
    start_timeout: float = 180.0,
) -> Iterator[LocalCluster]:
    """Start a head node (with the dashboard and Jobs API) and `num_nodes - 1` worker nodes.

    Yields once the Jobs API answers and every node is alive; stops the nodes on exit.
    `node_env`: extra environment for every node's processes (so for jobs' drivers and workers).
    `auth_mode`: RAY_AUTH_MODE of the nodes ("disabled" or "token"; see node_environment).
    """
    with ExitStack() as stack:
        head_ports = free_ports(len(HEAD_PORT_FLAGS))
        gcs_port, dashboard_port = head_ports[:2]
        cluster = LocalCluster(f"{HOST}:{gcs_port}", f"http://{HOST}:{dashboard_port}")
        stack.callback(_stop_all, cluster)
        for index in range(num_nodes):
            temp_dir = Path(tempfile.mkdtemp(prefix=f"lmf-ray{index}-", dir="/tmp"))  # sockets: short path
            stack.callback(shutil.rmtree, temp_dir, True)
            if index == 0:
                role = ["--head", "--include-dashboard=true", f"--dashboard-host={HOST}"]
                role += [f"{flag}={port}" for flag, port in zip(HEAD_PORT_FLAGS, head_ports, strict=True)]
            else:
                role = [f"--address={cluster.gcs_address}"]
            ports = [f"{flag}={port}" for flag, port in zip(NODE_PORT_FLAGS, free_ports(6), strict=True)]
            command = [
                str(VENV_BIN / "ray"),
                "start",
                "--block",
                *role,
                *ports,
                f"--num-cpus={num_cpus}",
                f"--object-store-memory={object_store_bytes}",
                f"--temp-dir={temp_dir}",
                f"--node-ip-address={HOST}",
                "--disable-usage-stats",
            ]
            # Each node its own lmforge cache, as on separate machines: what one node downloads from
            # an object store is not there for another.
            env = node_environment(
                {CACHE_ENV: str(temp_dir / "lmforge-cache"), **(node_env or {})}, auth_mode
            )
            cluster.nodes.append(_start_node(command, temp_dir, env))
            if index == 0:
                _wait_for(lambda: _jobs_api_up(cluster.dashboard_url), start_timeout, cluster, "Jobs API")
        _wait_for(lambda: _alive_nodes(cluster.dashboard_url) >= num_nodes, start_timeout, cluster, "nodes")
        yield cluster


def _start_node(command: list[str], temp_dir: Path, env: dict[str, str]) -> RayNode:
    log_path = temp_dir.with_name(temp_dir.name + ".log")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return RayNode(process, temp_dir, log_path)


def _stop_all(cluster: LocalCluster) -> None:
    for node in reversed(cluster.nodes):  # workers before the head
        start = time.monotonic()
        node.stop()
        print(f"ray node {node.temp_dir.name} stopped in {time.monotonic() - start:.1f} s", file=sys.stderr)
        node.log_path.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    """Whether a live process of the group remains; zombies do not count (in a container whose
    PID 1 does not reap, a stopped node's orphans stay zombies indefinitely)."""
    import psutil

    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def _group_commands(pgid: int) -> list[str]:
    import psutil

    commands = []
    for process in psutil.process_iter(["status", "cmdline"]):
        with suppress(OSError, psutil.Error):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                commands.append(f"  {process.pid} {' '.join(process.info['cmdline'] or [])[:160]}")
    return commands


def _wait_for(ready, timeout: float, cluster: LocalCluster, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if node.process.poll() is not None:
                raise RuntimeError(f"a Ray node exited while waiting for {what}:\n{cluster.log_tail()}")
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"Ray cluster: no {what} after {timeout:.0f} s:\n{cluster.log_tail()}")


def _jobs_api_up(dashboard_url: str) -> bool:
    import urllib.request

    try:
        with closing(urllib.request.urlopen(f"{dashboard_url}/api/version", timeout=2)) as response:
            return response.status == 200
    except OSError:
        return False


def _alive_nodes(dashboard_url: str) -> int:
    """Nodes the GCS reports alive (through the dashboard's state API)."""
    import json
    import urllib.request

    url = f"{dashboard_url}/api/v0/nodes?detail=false&limit=100"
    try:
        with closing(urllib.request.urlopen(url, timeout=5)) as response:
            result = json.load(response)["data"]["result"]["result"]
    except (OSError, KeyError, ValueError):
        return 0
    return sum(1 for node in result if node.get("state") == "ALIVE")
