"""A real multi-node Ray cluster on this machine for tests: a head and further nodes, each a
``ray start --block`` process of its own (as on separate machines), with a private temp dir
and free ports, so it never meets another cluster; torn down by process id."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 90.0


def cluster_env() -> dict[str, str]:
    """The environment of the nodes and of drivers joining them: no token authentication
    (the test cluster listens on loopback only), this checkout first on the path, one thread
    per library on shared cores."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalCluster:
    """A running cluster: ``address`` (HOST:PORT of the head's GCS) for ``--address``, and
    ``client_address`` (``ray://HOST:PORT``, Ray Client on the head)."""

    address: str
    client_address: str
    temp_dir: Path
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def node_pids(self, index: int) -> set[int]:
        """The processes of node ``index`` (0: the head): ``ray start``, its raylet, workers."""
        return {self.nodes[index].pid, *_descendants(self.nodes[index].pid)}

    def kill_node(self, index: int) -> None:
        """Take node ``index`` (0: the head) away at once, as a machine that is lost."""
        _stop([self.nodes[index]])

    def alive_nodes(self) -> int:
        """Nodes the head reports alive (asked from a short-lived driver subprocess)."""
        code = (
            f"import ray; ray.init(address={self.address!r}, logging_level='ERROR');"
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=cluster_env(),
            timeout=60,
            check=True,
        )
        return int(out.stdout.strip().splitlines()[-1])


def _node_args(cpus: int) -> list[str]:
    return [
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--object-store-memory=100000000",
    ]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's workers start sessions of their own, so the
    process group alone does not reach them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    doomed = [p.pid for p in processes]
    for process in processes:
        doomed += _descendants(process.pid)
    for pid in reversed(doomed):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[LocalCluster]:
    """Start a head and ``nodes - 1`` more nodes; yield once all are alive; kill them all."""
    temp_dir = Path(tempfile.mkdtemp(prefix="avray", dir="/tmp"))  # unix sockets: short path
    port, client_port = free_port(), free_port()
    cluster = LocalCluster(
        address=f"127.0.0.1:{port}",
        client_address=f"ray://127.0.0.1:{client_port}",
        temp_dir=temp_dir,
    )
    env = cluster_env()
    try:
        head = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false"]
        head += [f"--dashboard-port={free_port()}", f"--ray-client-server-port={client_port}"]
        head += [f"--temp-dir={temp_dir}", *_node_args(cpus_per_node)]
        cluster.nodes.append(_spawn(head, env, temp_dir / "head.log"))
        _wait_for_port(port, cluster)
        for index in range(1, nodes):
            node = [RAY, "start", f"--address={cluster.address}", f"--temp-dir={temp_dir}"]
            node += _node_args(cpus_per_node)
            cluster.nodes.append(_spawn(node, env, temp_dir / f"node{index}.log"))
        deadline = time.monotonic() + START_TIMEOUT_S
        while cluster.alive_nodes() < nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only some Ray nodes started; logs in {temp_dir}")
            time.sleep(0.5)
        yield cluster
    finally:
        _stop(cluster.nodes)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_port(port: int, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if cluster.nodes[0].poll() is not None:
            log = (cluster.temp_dir / "head.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Ray head exited:\n{log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the Ray head did not listen on {port}")
