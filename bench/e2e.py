"""End-to-end throughput and score of the pipeline: clips/s, time per stage, contest score, per configuration.

``python -m bench.e2e [--setups tiny light seed] [--data ROOT | --items 10] [--device auto]
[--weights SETUP DETECTOR EMBEDDER[,EMBEDDER...]] [--keep DIR] [--engine ray [--ray-address ADDR]]``

Setups: ``tiny`` (tiny detector + tiny embedder), ``demo`` (Lite0 detector +
Lite0 embedder, what ``pipeline.demo`` trains), ``light`` (Lite2 detector +
Lite0/1/2 ensemble), ``seed`` (VoVNet-99 detector + the seed's four
EfficientNets). A setup without ``--weights`` runs with untrained detector
weights (and ImageNet weights for the Lite embedders): its timing is real,
its score is not, and the table says ``trained: no``. Each run starts from an
empty output folder, so every stage is timed cold. ``peak_rss_mib`` is the
highest resident memory of the setup's stages (each stage's peak measured on
its own, ``dataset.memory``; ``peak_scope`` says when it could only be the
process's peak so far). Results go to
``bench/results/e2e.json``; ``--keep DIR`` leaves each setup's stage outputs
in ``DIR/run_SETUP`` (and a generated test root in ``DIR/data``), so that
``bench.match_rules`` can score other voting rules on the same run.

``--engine ray`` runs every setup twice on the same data, embedded first and then with its encode stage on Ray
(a local instance, or the cluster at ``--ray-address``), one row each, so the table shows what Ray costs or gains
here; the Ray rows' per-step seconds are summed over its tasks and actors, and ``actors`` says how many encoded.
Results go to ``bench/results/e2e_ray.json``.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from bbox_sub.config import load_detector_config
from bench.common import print_table, write_result
from bench.detect import noise_frames, untrained_detector
from dataset.layout import load_dataset
from dataset.synth import SynthConfig, generate
from metric_sub.config import load_embedder_config
from metric_sub.model import build_embedder
from pipeline.run import PipelineResult, run_pipeline
from runtime.checkpoint import save_checkpoint
from runtime.device import pick_device

SETUPS = {
    "tiny": ("tiny", ["tiny"]),
    "demo": ("lite0", ["lite0"]),
    "light": ("lite2", ["lite0", "lite1", "lite2"]),
    "seed": ("seed_vovnet99", ["seed_b5a", "seed_b5b", "seed_b6", "seed_b7"]),
}
RESULT = Path(__file__).resolve().parent / "results" / "e2e.json"
RAY_RESULT = RESULT.with_name("e2e_ray.json")
RAY_NOTE = ("local rows: read_s is the time spent waiting for decoded sources; ray rows: read/detect/embed/write "
            "seconds are summed over Ray's tasks and actors, encode_s includes starting or joining Ray and loading "
            "the models in every actor, and peak_rss_mib is the driver's alone (the actors are other processes)")


def untrained_weights(folder: Path, detector: str, embedders: list[str]) -> tuple[Path, list[Path | None]]:
    """Initial weights saved as checkpoints, for timing setups that have no trained models here (the detector's
    norm statistics calibrated, so that its RPN proposes as many boxes as a trained one: ``bench.detect``)."""
    torch.manual_seed(0)
    model = untrained_detector(load_detector_config(detector).model, noise_frames(2), torch.device("cpu"))
    det = save_checkpoint(folder / f"{detector}.pth", {"model": model.state_dict()})
    emb: list[Path | None] = []
    for name in embedders:
        config = load_embedder_config(name)
        if config.model.init == "random":
            emb.append(save_checkpoint(folder / f"{name}.pt", {"model": build_embedder(config).state_dict()}))
        else:
            emb.append(None)
    return det, emb


def _peak_memory(result: PipelineResult) -> dict[str, float | str | None]:
    """The highest resident memory of a run's stages, and whether it is theirs or the process's so far."""
    measured = [r.memory for r in result.stages.values() if r.memory is not None]
    if not measured:
        return {"peak_rss_mib": None, "peak_scope": None}
    top = max(measured, key=lambda m: m.peak_rss_mib)
    return {"peak_rss_mib": round(top.peak_rss_mib, 1), "peak_scope": top.peak_scope}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=["tiny"])
    parser.add_argument("--data", type=Path, help="an annotated test root (default: generate one)")
    parser.add_argument("--items", type=int, default=10, help="items of the generated test root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", nargs=3, action="append", default=[], metavar=("SETUP", "DETECTOR", "EMBEDDERS"),
                        help="trained weights of a setup: detector checkpoint, comma-separated embedder checkpoints "
                             "('-' keeps ImageNet weights)")
    parser.add_argument("--detector-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--embedder-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value in every embedder config (e.g. data.bucket_scale=0.5)")
    parser.add_argument("--keep", type=Path, help="keep the stage outputs here instead of a temporary folder")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: each setup embedded and then on Ray, side by side")
    parser.add_argument("--ray-address", help="the Ray cluster to join (default: a local instance)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out_file = args.out or (RAY_RESULT if args.engine == "ray" else RESULT)
    engines = ["local", "ray"] if args.engine == "ray" else ["local"]
    device = pick_device(args.device)
    trained = {setup: (Path(det), [None if w == "-" else Path(w) for w in embs.split(",")])
               for setup, det, embs in args.weights}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        work = args.keep or Path(tmp)
        data = args.data
        if data is None:
            data = work / "data"
            generate(data, replace(SynthConfig(), items=args.items, seed=7, first_id=90_001), contact_sheet=False)
        clips = len(load_dataset(data).videos)
        for setup in args.setups:
            detector, embedders = SETUPS[setup]
            weights = trained.get(setup) or untrained_weights(work / "weights", detector, embedders)
            det_cfg = load_detector_config(detector, args.detector_set)
            emb_cfgs = [load_embedder_config(name, args.embedder_set) for name in embedders]
            for engine in engines:
                out = work / (f"run_{setup}" if engine == "local" else f"run_{setup}_{engine}")
                shutil.rmtree(out, ignore_errors=True)
                result = run_pipeline(data, out, detector=(det_cfg, weights[0]),
                                      embedders=list(zip(emb_cfgs, weights[1])), device=str(device), report=False,
                                      engine=engine, ray_address=args.ray_address)
                seconds = result.stage_seconds
                total = seconds["encode"] + seconds["match"]
                steps = result.stages["encode"].steps or {}
                row = {"setup": setup, "device": str(device), "trained": setup in trained, "clips": clips,
                       "encode_s": seconds["encode"], **{f"{k}_s": v for k, v in steps.items()},
                       "match_s": seconds["match"],
                       "clips_per_s": clips / total if total else None, "matched": len(result.result),
                       "score": result.score["final"] if result.score else None, **_peak_memory(result)}
                if args.engine == "ray":
                    record = result.stages["encode"].engine or {}
                    row = {"engine": engine, **row, "actors": record.get("actors")}
                rows.append(row)
    columns = ["setup", "device", "trained", "clips", "encode_s", "read_s", "detect_s", "embed_s", "write_s",
               "match_s", "clips_per_s", "matched",
               "score", "peak_rss_mib"]
    if args.engine == "ray":
        columns = ["engine", *columns, "actors"]
    print_table(rows, columns)
    write_result(out_file, "e2e", rows, {"data": str(args.data or f"synthetic, {args.items} items, defaults"),
                                         "detector_set": args.detector_set, "embedder_set": args.embedder_set,
                                         "weights": args.weights, "engine": args.engine,
                                         "ray_address": args.ray_address, **({"note": RAY_NOTE} if args.engine == "ray"
                                                                             else {})})


if __name__ == "__main__":
    main()
