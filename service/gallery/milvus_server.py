"""A real Milvus standalone server on 127.0.0.1, from the PyPI package ``milvus`` (``milvus-server``).

For the tests, the benchmarks and trying the Milvus backend without
containers; production runs Milvus's own images (``docker/compose.yaml``,
profile ``milvus``). ``milvus-server`` is a Python wrapper that unpacks and
starts the ``milvus`` binary as its child, so the server runs in its own
process group and is stopped (or killed) as a group: killing the wrapper
alone would leave the binary running.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 180.0
"""Longest wait for a start: the first one also unpacks the server's binary."""


def server_command() -> str | None:
    """The ``milvus-server`` script of this Python's environment, else one on ``PATH``; ``None`` if absent."""
    beside = Path(sys.executable).parent / "milvus-server"
    return str(beside) if beside.is_file() else shutil.which("milvus-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalMilvus:
    """``milvus-server --data DIR --proxy-port PORT`` in a subprocess: ``start``, ``stop``, ``kill``, restart.

    ``time_tick_ms`` is the proxy's time tick: the tests lower it from Milvus's
    200 ms so that Strong reads, which wait for the next tick, take less time.
    """

    def __init__(self, data_dir: Path | str, *, port: int | None = None, time_tick_ms: int = 200,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        command = server_command()
        if command is None:
            raise FileNotFoundError("milvus-server is not installed (PyPI package milvus, pinned in requirements.txt)")
        self.command = command
        self.data_dir = Path(data_dir)
        self.port = port or _free_port()
        self.time_tick_ms = time_tick_ms
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalMilvus:
        """Start and wait until the proxy answers (bounded by ``start_timeout_s``); the data folder is kept."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.time() - 1
        log = (self.data_dir / "server.log").open("ab")
        env = {**os.environ, "ETCD_CONFIG_PATH": str(self._etcd_config())}
        self.process = subprocess.Popen(
            [self.command, "--data", str(self.data_dir), "--proxy-port", str(self.port),
             "--extra-config", f"proxy.timeTickInterval={self.time_tick_ms}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-server exited with {self.process.returncode}:\n{self.log_tail()}")
            self.port = self._configured_port(started) or self.port
            if self._answers():
                return self
            time.sleep(0.5)
        self.kill()
        raise TimeoutError(f"milvus-server did not answer on {self.uri} within {self.start_timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def _etcd_config(self) -> Path:
        """The embedded etcd's own config: free loopback ports, chosen at the first start and kept after (etcd
        stores its peer address with its data). Without it etcd takes 2379 and 2380, and a second server on the
        same machine fails to start; Milvus reads the file's path from ``ETCD_CONFIG_PATH``."""
        path = self.data_dir / "etcd.yaml"
        if not path.is_file():
            client, peer = _free_port(), _free_port()
            path.write_text(f"name: shopmatch\nlisten-client-urls: http://127.0.0.1:{client}\n"
                            f"advertise-client-urls: http://127.0.0.1:{client}\n"
                            f"listen-peer-urls: http://127.0.0.1:{peer}\n"
                            f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
                            f"initial-cluster: shopmatch=http://127.0.0.1:{peer}\n")
        return path

    def _configured_port(self, since: float) -> int | None:
        """The proxy port the wrapper wrote into this start's config: it moves on to the next free port when
        the asked one cannot be bound (a restart while the old port lingers), without saying so."""
        config = self.data_dir / "configs" / "milvus.yaml"
        try:
            if config.stat().st_mtime < since:
                return None
            text = config.read_text()
        except OSError:
            return None
        section = re.search(r"^proxy:$", text, flags=re.M)
        match = re.compile(r"^  port: (\d+)", flags=re.M).search(text, section.end()) if section else None
        return int(match.group(1)) if match else None

    def _answers(self) -> bool:
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=3)
        except Exception:  # not listening yet: pymilvus raises its own or grpc's errors
            return False
        try:
            client.list_collections()
            return True
        except Exception:
            return False
        finally:
            client.close()

    def log_tail(self, chars: int = 3000) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def _signal_group(self, sig: int) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM to the server's group, SIGKILL after ``timeout_s``. Milvus 2.3 standalone stops its
        coordinators at once but its nodes then retry them for minutes; the package's own stop (Ctrl+C) kills
        the binary after 1 s. What was acknowledged is kept either way (its write-ahead log: tested)."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (self.process.poll() is None or self._group_alive()):
            time.sleep(0.2)  # the binary shuts down after its wrapper has gone
        self._kill_group()

    def kill(self) -> None:
        """SIGKILL to the whole group, as a crash would: nothing is flushed or closed."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self._kill_group()

    def _kill_group(self) -> None:
        """Make sure no process of the group is left (the binary may outlive its wrapper), and reap."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._group_alive():
            time.sleep(0.1)
        self.process = None

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
