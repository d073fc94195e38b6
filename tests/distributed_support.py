"""Starting real ``torchrun`` groups from tests: 2 gloo ranks on 127.0.0.1, bounded in time, always stopped."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from support import free_loopback_port

REPO = Path(__file__).resolve().parents[1]
RANK_TIMEOUT_S = 60
"""How long a rank waits at a collective before failing, so that a hang fails the test instead of stalling it."""


def torchrun_command(module: str, args: list[str], ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={free_loopback_port()}", "-m", module, *args]


def _environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               SHOPMATCH_DIST_TIMEOUT_S=str(RANK_TIMEOUT_S), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@contextlib.contextmanager
def started(module: str, args: list[str], log: Path, ranks: int = 2) -> Iterator[subprocess.Popen]:
    """A torchrun group in its own session writing to ``log``; every process of it is killed on leaving."""
    with log.open("wb") as sink:
        process = subprocess.Popen(torchrun_command(module, args, ranks), cwd=REPO, env=_environment(),
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def run_torchrun(module: str, args: list[str], log: Path, timeout_s: float = 120, ranks: int = 2) -> str:
    """Run a torchrun group to its end; its output, or an AssertionError carrying it when it fails."""
    with started(module, args, log, ranks) as process:
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
    output = log.read_text(errors="replace")
    assert code == 0, f"torchrun {module} ended with {code}:\n{output[-6000:]}"
    return output


def kill_when(module: str, args: list[str], log: Path, ready: Callable[[], bool], timeout_s: float = 120) -> None:
    """Start a torchrun group and SIGKILL all of it as soon as ``ready()`` holds (polled)."""
    with started(module, args, log) as process:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert process.poll() is None, f"ended before it could be killed:\n{log.read_text()[-6000:]}"
            assert time.monotonic() < deadline, f"not ready after {timeout_s} s:\n{log.read_text()[-6000:]}"
            time.sleep(0.05)
