"""The encode stage on a Ray cluster (``--engine ray``): the embedded run's per-source path, spread over Ray Data.

One row per source not yet stored. Decoding runs as CPU tasks (``read_source``; an unreadable source becomes a
row carrying its error, so a corrupt clip is reported and skipped as in the embedded run instead of failing the
job). Detection, crops and embedding run in an actor pool: each actor loads the models once (``load_encoder``),
takes groups of ``group_size`` decoded sources, runs ``SourceEncoder.prepare`` and ``embed`` on them (the same
code, batching and precision as the embedded run) and writes every source with ``SourceStore.save``, keyed as
the embedded run keys it. So the store is the result: a run killed anywhere resumes by skipping what is written,
and voting and the report on the driver read the same files whichever engine wrote them.

Where the store and the inputs live: the actors write to ``OUT/sources`` and the read tasks open the dataset
files by the paths the driver saw, so on a cluster of several machines the dataset roots, the model weights and
OUT must be one shared filesystem mounted at the same path on every node (NFS, a cloud file store). On one
machine they are.

Faults: a read task lost with its node (or whose output was lost with it) is run again (``READ_RETRIES``).
Actors never take every CPU: at least one in four is left to the read tasks, which would otherwise wait forever
for a CPU while the actors wait for them (ray-project/ray#44687). For the same reason Ray does not restart a lost
actor (``MAX_RESTARTS`` = 0): restarted on the nodes left, it could take the CPU their read tasks need. A job
that loses an actor with work in flight fails instead, and the engine runs a new one over the sources not yet
stored, with a pool planned on the nodes alive then (``JOB_ATTEMPTS``): the store makes that a resume, as for a
killed run. If nonetheless no source finishes for ``stall_seconds``, the run stops with an error instead of
hanging.

Nothing outside this module imports Ray; it is imported only when the Ray engine is asked for.
"""
from __future__ import annotations

import gc
import json
import logging
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch

from dataset.errors import DataError, Issue
from metric_sub.data import CropRef
from pipeline.encode import DetectorSpec, EmbedderSpec, EncodeReport, load_encoder, models_key
from pipeline.source import Source, read_source
from pipeline.store import SourceStore
from runtime.allocator import release_freed_memory
from runtime.device import pick_device

log = logging.getLogger(__name__)

MAX_RESTARTS = 0
"""Ray does not restart a lost encode actor (see the module docstring); the next job's pool replaces it."""
MAX_TASK_RETRIES = 0
"""Nor retries the calls it held: the job fails, and the next one encodes those sources."""
READ_RETRIES = 4
"""Times a read task lost with its node (or its output lost with the node's object store) is run again."""
JOB_ATTEMPTS = 3
"""Times the job is run over the sources not yet stored when Ray could not recover a loss inside it."""
NODE_DEATH_SECONDS = 60.0
"""How long, after a lost actor, to wait for Ray to mark its node dead (its health checks take their time)."""
RELEASE_SECONDS = 30.0
"""How long to wait for a failed job's actors to end before the next job starts."""
STALL_SECONDS = 900.0
"""No source finished for this long: the run fails loudly (the first sources wait for the models to load)."""
STEPS = ("read", "detect", "embed", "write")


LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.ObjectLostError,
        ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError, ray.exceptions.RaySystemError)
"""What a lost node, actor or object raises (an exception of the encoding code itself is not retried)."""


def source_to_json(source: Source) -> str:
    """A source as a plain JSON string, the form it travels in between the driver and the cluster."""
    return json.dumps(source.describe())


def source_from_json(text: str) -> Source:
    raw = json.loads(text)
    given = None if raw["given"] is None else tuple(
        CropRef(r["kind"], r["source_id"], r["path"], r["frame"], tuple(r["box"]), r["group"], r["instance_id"],
                r["score"]) for r in raw["given"])
    return Source(raw["kind"], raw["id"], tuple(raw["files"]), tuple(raw["frames"]), given)


@dataclass(frozen=True)
class PoolPlan:
    """How many encode actors may run and what each holds: one GPU each where the cluster has GPUs, else one CPU,
    with CPUs left over for the read tasks."""

    min_actors: int
    max_actors: int
    num_cpus: float
    num_gpus: float
    device: str

    def to_json(self) -> dict[str, Any]:
        return {"min_actors": self.min_actors, "max_actors": self.max_actors, "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus, "device": self.device}


def plan_pool(resources: dict[str, float], *, device: str) -> PoolPlan:
    """The actor pool for a cluster's ``resources`` (``ray.cluster_resources()``) and the asked ``device``
    (``auto``: the GPUs where the cluster has any)."""
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if cpus < 2:
        raise ValueError(f"the Ray cluster has {cpus} CPU(s): the read tasks and the encode actors need 2 at least")
    spare = cpus - max(1, cpus // 4)  # the rest is the read tasks'
    if device.startswith("cuda") and not gpus:
        raise ValueError(f"device {device!r} asked for, but the Ray cluster has no GPUs")
    if gpus and device != "cpu":
        size = max(1, min(gpus, spare))
        return PoolPlan(size, size, 1.0, 1.0, "cuda")
    size = max(1, spare)
    return PoolPlan(size, size, 1.0, 0.0, "cpu")


def _read_row(row: dict[str, Any], *, backend: str = "auto") -> dict[str, Any]:
    """Decode one source (clips by the video ``backend``); an unreadable one becomes a row with its error (data,
    not a failed task)."""
    started = time.perf_counter()
    try:
        blob, error = pickle.dumps(read_source(source_from_json(row["source"]), backend=backend), protocol=5), ""
    except DataError as exc:
        blob, error = b"", json.dumps({"path": str(exc.path), "problem": exc.problem})
    return {"key": row["key"], "read": blob, "error": error, "read_s": time.perf_counter() - started}


class EncodeActor:
    """One member of the actor pool: the models loaded once, then groups of decoded sources encoded and stored."""

    def __init__(self, *, detector: DetectorSpec | None, embedders: Sequence[EmbedderSpec], device: str,
                 models: dict, store_folder: str) -> None:
        torch_device = pick_device(device)
        here = models_key(detector, embedders, torch_device)
        if here != models:
            raise RuntimeError(f"the models on this actor ({device}) key their vectors differently from the "
                               f"driver: {here} != {models}; are the weights the same files on every node?")
        self.encoder = load_encoder(detector=detector, embedders=embedders, device=torch_device)
        self.store = SourceStore(store_folder, models)
        context = ray.get_runtime_context()
        self.node, self.actor = context.get_node_id(), context.get_actor_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        seconds = [dict.fromkeys(STEPS, 0.0) for _ in rows]
        prepared = []
        for index, row in enumerate(rows):
            seconds[index]["read"] = float(row["read_s"])
            if row["error"]:
                continue
            started = time.perf_counter()
            prepared.append((index, self.encoder.prepare(pickle.loads(row["read"]))))
            seconds[index]["detect"] = time.perf_counter() - started
        if prepared:
            started = time.perf_counter()
            encoded = self.encoder.embed([p for _, p in prepared])
            share = (time.perf_counter() - started) / len(prepared)
            for (index, _), item in zip(prepared, encoded):
                seconds[index]["embed"] = share
                started = time.perf_counter()
                self.store.save(str(rows[index]["key"]), item)
                seconds[index]["write"] = time.perf_counter() - started
            release_freed_memory()
        out: dict[str, list] = {"key": [str(r["key"]) for r in rows], "error": [str(r["error"]) for r in rows],
                                "node": [self.node] * len(rows), "actor": [self.actor] * len(rows)}
        for step in STEPS:
            out[f"{step}_s"] = [s[step] for s in seconds]
        return out


def _remote_models_key(detector: DetectorSpec | None, embedders: Sequence[EmbedderSpec], device: str) -> dict:
    return models_key(detector, embedders, torch.device(device))


@dataclass
class RayReport(EncodeReport):
    """An ``EncodeReport`` whose ``seconds`` are summed over every task and actor (work, not wall time), with
    ``engine``: the cluster, the pool and how many actors encoded how many sources on which node."""

    engine: dict[str, Any] = field(default_factory=dict)


class RayCluster:
    """A connection to a Ray cluster (or a local instance) and the actor pool planned for it."""

    def __init__(self, *, address: str | None, plan: PoolPlan, resources: dict[str, float],
                 connect: Callable[[], None] | None = None) -> None:
        self.address, self.plan, self.resources = address, plan, resources
        self.connect = connect
        """Connects this driver again; ``None`` when the connection is the caller's, not ours to end."""

    def _new_job(self) -> None:
        """End the driver's Ray job and start a new one: Ray then ends every actor of the failed job (a failed Ray
        Data job can leave some holding CPUs, and the next job's read tasks would wait for them forever)."""
        if self.connect is None:
            _release_actors()
            return
        ray.shutdown()
        self.connect()

    @property
    def device(self) -> str:
        """The device the encode actors run the models on (its precision goes into the store's keys)."""
        return self.plan.device

    def models_key(self, detector: DetectorSpec | None, embedders: Sequence[EmbedderSpec]) -> dict:
        """The store's models key as the actors will compute it: asked of a GPU worker when they run on GPUs,
        so a driver without one still keys the vectors by the precision they are computed in."""
        if self.plan.num_gpus:
            task = ray.remote(_remote_models_key).options(num_gpus=self.plan.num_gpus, num_cpus=self.plan.num_cpus)
            return ray.get(task.remote(detector, embedders, self.device))
        return models_key(detector, embedders, torch.device(self.device))

    def encode(self, todo: Sequence[tuple[Source, str]], store: SourceStore, *, detector: DetectorSpec | None,
               embedders: Sequence[EmbedderSpec], group_size: int, progress: bool, video_backend: str = "auto",
               stall_seconds: float = STALL_SECONDS) -> RayReport:
        """Encode and store every ``(source, key)`` on the cluster.

        Ray retries lost read tasks inside a job; a job that fails on a lost node, actor or object is run again
        on the nodes left, over the sources not yet stored, up to ``JOB_ATTEMPTS`` times: the store makes that
        a resume, as it is for a killed run.
        """
        report = RayReport()
        report.engine = {"name": "ray", "address": self.address or "local",
                         "cluster": {k: self.resources.get(k, 0.0) for k in ("CPU", "GPU")},
                         "steps": "seconds summed over tasks and actors", "attempts": []}
        placement: dict[str, dict[str, Any]] = {}
        failed: set[str] = set()
        remaining = list(todo)
        for attempt in range(1, JOB_ATTEMPTS + 1):
            if not remaining:
                break
            plan = plan_pool(_alive_resources(), device=self.device) if attempt > 1 else self.plan
            record: dict[str, Any] = {"sources": len(remaining), "pool": plan.to_json()}
            report.engine["attempts"].append(record)
            alive = _alive_nodes()
            try:
                self._run_job(remaining, store, plan, report, placement, failed, detector=detector,
                              embedders=embedders, group_size=group_size, progress=progress,
                              video_backend=video_backend, stall_seconds=stall_seconds)
            except LOST as exc:
                record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                if attempt == JOB_ATTEMPTS:
                    raise
                log.warning("ray: the job lost a node, actor or object (%s); running the sources not yet stored "
                            "again on the nodes left", record["error"])
                del exc
                record["nodes_lost"] = _wait_for_node_loss(alive)
                self._new_job()
            remaining = [(s, k) for s, k in remaining if k not in failed and not store.has(k)]
        nodes = {n["NodeID"]: n for n in ray.nodes()}
        for node, entry in placement.items():
            about = nodes.get(node, {})
            entry["actors"] = len(entry["actors"])
            entry.update(name=about.get("NodeName", "?"), alive_at_end=bool(about.get("Alive", False)))
        report.engine.update(actors=sum(e["actors"] for e in placement.values()),
                             nodes={node[:12]: placement[node] for node in sorted(placement)})
        return report

    def _run_job(self, todo: Sequence[tuple[Source, str]], store: SourceStore, plan: PoolPlan, report: RayReport,
                 placement: dict[str, dict[str, Any]], failed: set[str], *, detector: DetectorSpec | None,
                 embedders: Sequence[EmbedderSpec], group_size: int, progress: bool, video_backend: str,
                 stall_seconds: float) -> None:
        """One Ray Data job over ``todo``; its rows are counted into ``report``, ``placement`` and ``failed`` as
        they arrive, so a job that fails half-way still reports what it did."""
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        rows = [{"key": key, "source": source_to_json(source)} for source, key in todo]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        # The retry limits go as ray_remote_args, which Ray 2.60 warns are deprecated, yet it names no
        # parameter for them; dropping them would leave Ray Data's own retry and restart defaults.
        dataset = dataset.map(_read_row, fn_kwargs={"backend": video_backend}, num_cpus=1, max_retries=READ_RETRIES)
        dataset = dataset.map_batches(
            EncodeActor, batch_size=group_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus or None,
            max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
            fn_constructor_kwargs={"detector": detector, "embedders": list(embedders), "device": plan.device,
                                   "models": store.models, "store_folder": str(store.folder)})
        for row in _rows_until_stalled(dataset, len(todo), stall_seconds):
            for step in STEPS:
                report.seconds[step] += float(row[f"{step}_s"])
            if row["error"]:
                problem = json.loads(row["error"])
                report.failures.append(Issue(problem["path"], problem["problem"], "error"))
                failed.add(row["key"])
                log.error("skipped %s: %s", problem["path"], problem["problem"])
                continue
            entry = placement.setdefault(row["node"], {"actors": set(), "sources": 0})
            entry["actors"].add(row["actor"])
            entry["sources"] += 1


def _alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _alive_resources() -> dict[str, float]:
    """The resources of the nodes alive now (``ray.cluster_resources`` lags a node's death)."""
    total: dict[str, float] = {}
    for node in ray.nodes():
        if node["Alive"]:
            for name, amount in node["Resources"].items():
                total[name] = total.get(name, 0.0) + amount
    return total


def _wait_for_node_loss(alive: set[str]) -> int:
    """After a lost actor or object: until Ray has marked the node that went away dead, if one did, so the next
    job is planned on the nodes left (planned with a dead node's CPUs, the actors would take every CPU of the
    others and starve the read tasks). Returns how many of ``alive`` died; 0 after ``NODE_DEATH_SECONDS``."""
    deadline = time.monotonic() + NODE_DEATH_SECONDS
    while time.monotonic() < deadline:
        lost = len(alive - _alive_nodes())
        if lost:
            return lost
        time.sleep(0.5)
    return 0


def _release_actors() -> None:
    """Where the Ray connection is the caller's (so the job cannot be ended): until the failed job's actors are
    gone and their CPUs free again, as far as dropping their handles ends them (bounded: on a cluster shared with
    other jobs the CPUs may never all be free)."""
    gc.collect()
    deadline = time.monotonic() + RELEASE_SECONDS
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= _alive_resources().get("CPU", 0.0):
            return
        time.sleep(0.5)
        gc.collect()


class EngineStalled(RuntimeError):
    """No source finished within the stall timeout."""


def _rows_until_stalled(dataset: Any, total: int, stall_seconds: float) -> Iterator[dict[str, Any]]:
    """The dataset's output rows; raises ``EngineStalled`` when none arrives for ``stall_seconds``."""
    arrived: queue.Queue = queue.Queue()
    done = object()

    def pump() -> None:
        try:
            for row in dataset.iter_rows():
                arrived.put(row)
            arrived.put(done)
        except BaseException as exc:  # handed to the driver's thread, which raises it
            arrived.put(exc)

    threading.Thread(target=pump, name="ray-encode-rows", daemon=True).start()
    count = 0
    while True:
        try:
            item = arrived.get(timeout=stall_seconds)
        except queue.Empty:
            raise EngineStalled(f"no source finished in {stall_seconds:.0f} s ({count} of {total} done): the "
                                "cluster may lack CPUs for the read tasks or have lost every encode actor; "
                                "what was written is kept, run again to resume") from None
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        count += 1
        yield item


@contextmanager
def ray_cluster(*, address: str | None, device: str) -> Iterator[RayCluster]:
    """Join the cluster at ``address`` (``ray start --head`` / KubeRay; ``auto`` finds a local one), or start a
    local instance without one; disconnects (and stops the local instance) at the end."""
    started = not ray.is_initialized()

    def connect() -> None:
        options: dict[str, Any] = {"logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(include_dashboard=False, **options)

    if started:
        connect()
    try:
        resources = ray.cluster_resources()
        plan = plan_pool(resources, device=device)
        log.info("ray: %s, %d CPUs, %d GPUs: %d to %d encode actors on %s", address or "local instance",
                 resources.get("CPU", 0), resources.get("GPU", 0), plan.min_actors, plan.max_actors, plan.device)
        yield RayCluster(address=address, plan=plan, resources=resources, connect=connect if started else None)
    finally:
        if started:
            ray.shutdown()

