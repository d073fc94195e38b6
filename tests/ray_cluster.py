"""A real Ray cluster of separate nodes on this machine, for the Ray engine's tests: a head node and worker nodes,
each its own ``ray start --block`` process with its own CPU count, every one stopped (or killed) by the test.

Ray turns 127.0.0.1 into this host's own address, so the nodes talk over the host's address; nothing leaves the
machine. Every port is chosen free up front (two nodes on one host would otherwise both take Ray's fixed
defaults), the dashboard is off, and the session lives under a short temp dir of its own (Unix socket paths have
a length limit). ``ray stop`` is never used: it would stop every Ray process on the machine, not only ours.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import free_loopback_port

RAY = str(Path(sys.executable).with_name("ray"))
DRIVER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
"""The environment every node and every driver of the cluster gets: the authentication mode must be the same on
all of them (a node in token mode refuses a driver without the token), whatever ~/.ray holds."""
START_TIMEOUT = 90.0
STOP_GRACE = 5.0
"""Seconds a node gets to end its processes on SIGTERM before they are killed."""
STOP_TIMEOUT = 20.0


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Ray's workers start sessions of their own, so a process group misses
    them)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(process: subprocess.Popen, sig: int) -> None:
    for pid in [process.pid, *_children(process.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class RayNode:
    """One ``ray start --block`` process and the Ray processes under it."""

    name: str
    process: subprocess.Popen
    log: Path
    killed: bool = False

    def kill(self) -> None:
        """The node dies at once, as a machine that loses power: SIGKILL to every process of it."""
        self.killed = True
        _kill_tree(self.process, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            tree = _children(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
            for pid in [self.process.pid, *tree]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait(timeout=STOP_TIMEOUT)


@dataclass
class LocalRayCluster:
    """A head node (``address`` for drivers) and worker nodes, started by ``start``; ``stop`` ends them all."""

    temp_dir: Path
    log_dir: Path
    port: int = field(default_factory=free_loopback_port)
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, cpus: int, head: bool) -> RayNode:
        ports = {flag: free_loopback_port() for flag in ("node-manager-port", "object-manager-port",
                                                         "metrics-export-port", "dashboard-agent-listen-port",
                                                         "dashboard-agent-grpc-port", "runtime-env-agent-port")}
        args = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
                "--object-store-memory=200000000", "--disable-usage-stats", "--log-style=record",
                *(f"--{flag}={port}" for flag, port in ports.items())]
        if head:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_loopback_port()}", f"--temp-dir={self.temp_dir}"]
        else:
            args += [f"--address={self.address}"]
        log = self.log_dir / f"{name}.log"
        env = {**os.environ, **DRIVER_ENV}
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                   env=env)
        node = RayNode(name, process, log)
        self.nodes.append(node)
        return node

    def start_head(self, *, cpus: int) -> RayNode:
        return self._start("head", cpus, head=True)

    def start_worker(self, name: str, *, cpus: int) -> RayNode:
        return self._start(name, cpus, head=False)

    def wait_for(self, alive: int) -> None:
        """Until ``alive`` nodes have joined (a bounded wait; a node that exited fails with its log)."""
        import ray

        deadline = time.monotonic() + START_TIMEOUT
        ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        try:
            while time.monotonic() < deadline:
                for node in self.nodes:
                    if node.process.poll() is not None and not node.killed:
                        raise RuntimeError(f"{node.name} exited: {node.log.read_text()[-2000:]}")
                if sum(n["Alive"] for n in ray.nodes()) >= alive:
                    return
                time.sleep(0.5)
        finally:
            ray.shutdown()
        raise TimeoutError(f"{alive} Ray nodes did not come up in {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def new_cluster(log_dir: Path) -> LocalRayCluster:
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    return LocalRayCluster(temp, log_dir)
