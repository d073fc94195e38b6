"""Generating a whole dataset root: plan, render items and clips in worker processes, write the manifest.

Each task (one item's shop images, or one clip) seeds its own generator from
the config seed and its index, so the output is identical for any number of
workers. Workers are spawned (not forked) and keep OpenCV single-threaded:
parallelism comes from the processes, and no thread pool is inherited.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dataset.jsonio import write_json_atomic
from dataset.synth.clips import render_clip
from dataset.synth.config import GENERATOR_VERSION, SynthConfig
from dataset.synth.contact_sheet import write_contact_sheet
from dataset.synth.plan import SHOP, ClipPlan, ItemPlan, make_plan
from dataset.synth.shop import write_item

MANIFEST = "synth_manifest.json"
CONTACT_SHEET = "contact_sheet.png"
LAYOUT_DIRS = ("image", "image_annotation", "video", "video_annotation")

Task = tuple[str, ItemPlan | ClipPlan]


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier dataset unless asked to replace it (only the layout folders are removed)."""
    existing = [out / d for d in LAYOUT_DIRS if (out / d).exists() and any((out / d).iterdir())]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset ({', '.join(p.name for p in existing)}); "
                              "pass overwrite=True (--overwrite) to replace it")
    for folder in existing:
        shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)


def _init_worker() -> None:
    cv2.setNumThreads(1)


def run_task(task: Task, config: SynthConfig, root: Path) -> tuple[str, str, Any]:
    """Render one item or clip; module-level so worker processes can import it."""
    kind, plan = task
    if kind == "clip":
        assert isinstance(plan, ClipPlan)
        return kind, plan.video_id, render_clip(plan, config, root)
    assert isinstance(plan, ItemPlan)
    rng = np.random.default_rng([config.seed, SHOP, plan.index])
    return kind, plan.item_id, write_item(root, plan.item_id, plan.design, plan.instance_id, rng, config)


def _run_all(tasks: list[Task], config: SynthConfig, root: Path, workers: int,
             progress: Callable[[int, int], None] | None) -> list[tuple[str, str, Any]]:
    """Every task's result in task order; ``progress(done, total)`` is called at the start (0) and as each
    task finishes, in whatever order they finish."""
    report = progress or (lambda done, total: None)
    report(0, len(tasks))
    if workers <= 1:
        results = []
        for k, task in enumerate(tasks):
            results.append(run_task(task, config, root))
            report(k + 1, len(tasks))
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(run_task, task, config, root): k for k, task in enumerate(tasks)}
        finished: dict[int, tuple[str, str, Any]] = {}
        for future in as_completed(futures):
            finished[futures[future]] = future.result()
            report(len(finished), len(tasks))
    return [finished[k] for k in range(len(tasks))]


def generate(out_dir: Path | str, config: SynthConfig, workers: int | None = None, overwrite: bool = False,
             contact_sheet: bool = True, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write a synthetic dataset root in the contest layout; returns a summary with timings.

    ``workers`` defaults to the number of CPU cores; it changes speed, never
    the data. With more than one worker, processes are spawned, so a script
    calling this must guard its entry point with ``if __name__ == "__main__"``. ``synth_manifest.json`` holds the config, the generator version
    and the ground truth per clip (which item it shows, or none) and per item
    (design, colour-variant group).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    _prepare(out, overwrite)
    plan = make_plan(config)
    workers = workers or os.cpu_count() or 1
    tasks: list[Task] = [("clip", c) for c in plan.clips] + [("item", i) for i in plan.items]
    results = _run_all(tasks, config, out, min(workers, len(tasks)), progress)
    clips = {key: value for kind, key, value in results if kind == "clip"}
    images = {key: value for kind, key, value in results if kind == "item"}
    manifest = {
        "generator": "dataset.synth",
        "version": GENERATOR_VERSION,
        "seed": config.seed,
        "config": config.to_dict(),
        "items": [{"item_id": i.item_id, "instance_id": i.instance_id, "label": i.design.label,
                   "category": i.design.silhouette.category, "variant_group": i.group, "images": images[i.item_id],
                   "design": i.design.to_dict()} for i in plan.items],
        "colour_variant_groups": [list(g) for g in plan.groups],
        "clips": [clips[c.video_id] for c in plan.clips],
    }
    write_json_atomic(out / MANIFEST, manifest, indent=1)
    rendered = time.perf_counter()
    if contact_sheet:
        write_contact_sheet(out, out / CONTACT_SHEET)
    seconds = time.perf_counter() - started
    return {
        "out_dir": str(out),
        "items": len(plan.items),
        "clips": len(plan.clips),
        "uncatalogued_clips": sum(1 for c in plan.clips if c.item_id is None),
        "images": sum(len(v) for v in images.values()),
        "workers": min(workers, len(tasks)),
        "render_seconds": round(rendered - started, 2),
        "seconds": round(seconds, 2),
        "items_per_s": round(len(plan.items) / max(rendered - started, 1e-9), 3),
        "clips_per_s": round(len(plan.clips) / max(rendered - started, 1e-9), 3),
    }



def ensure(out_dir: Path | str, config: SynthConfig, **kwargs: Any) -> bool:
    """Generate ``out_dir`` unless its manifest records exactly this config; True if it generated.

    Lets demos and benchmarks rerun without regenerating minutes of data,
    while any changed knob still produces a fresh set.
    """
    manifest = Path(out_dir) / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("config") == config.to_dict():
        return False
    generate(out_dir, config, overwrite=True, **kwargs)
    return True