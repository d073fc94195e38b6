"""Retrieval accuracy of the embedder: recall@1 from shop-image crops to clip crops (ground-truth boxes).

Two measurements, each optional:

* ``--synthetic``: generate a train and a disjoint test split with
  ``dataset.synth``, train each ``--train-configs`` entry on the train split,
  embed the test split and score it (plus the untrained ImageNet Lite
  ensemble as a baseline). Training runs without validation, so the scored
  weights are the final ones and the test split is seen once, after training.
  ``tiny`` fits a CPU; ``lite0,lite1,lite2`` and the seed configs want a GPU.
* ``--zero-shot``: the ImageNet Lite ensemble without any training on
  ``../shared/data/taobao_live_sample`` (10 real items; a small sample).

``python -m bench.embed_accuracy --synthetic --train-configs tiny --zero-shot``
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import Timer, print_table, synthetic_splits, write_result
from dataset.errors import IssueLog
from dataset.layout import load_dataset
from metric_sub.config import load_embedder_config
from metric_sub.data import ground_truth_crops
from metric_sub.embed import ModelRunner, embed_refs, load_runner
from metric_sub.evaluate import retrieval_report
from metric_sub.train import Trainer
from runtime.device import pick_device

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "taobao_live_sample"
LITE = ("lite0", "lite1", "lite2")


def score(runners: Sequence[ModelRunner], root: Path, min_frame: int) -> dict[str, float]:
    """Recall@1/@5 and match acc of an ensemble on a root's ground-truth crops."""
    issues = IssueLog()
    refs = ground_truth_crops(load_dataset(root, issues), min_frame)
    embeddings, kept = embed_refs(runners, refs, issues)
    return retrieval_report(embeddings, [refs[i].kind for i in kept], [refs[i].instance_id for i in kept])


def parse_knobs(knobs: list[str]) -> dict[str, Any]:
    """``name=value`` generator knobs, each value cast to the type of the knob's default."""
    from dataset.synth import SynthConfig

    return {k: type(getattr(SynthConfig(), k))(v) for k, v in (knob.split("=", 1) for knob in knobs)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embed_accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", action="store_true", help="train on a synthetic split, test on another")
    parser.add_argument("--train-configs", default="tiny", help="comma-separated configs to train and score")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="training override for every trained config, e.g. train.epochs=5")
    parser.add_argument("--items", type=int, default=40, help="items of the synthetic test split")
    parser.add_argument("--train-items", type=int, default=None,
                        help="items of the synthetic train split (default: --items); the test split stays the same")
    parser.add_argument("--synth", action="append", default=[], metavar="KNOB=VALUE",
                        help="dataset.synth knob, e.g. shop_size=256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("bench/work/embed_accuracy"),
                        help="generated data and checkpoints (reused when present)")
    parser.add_argument("--zero-shot", action="store_true", help="untrained Lite ensemble on the real sample")
    parser.add_argument("--min-frame", type=int, default=0, help="first clip frame scored")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS / "embed_accuracy.json")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    lite = [load_runner(load_embedder_config(n), None, device) for n in LITE]
    rows = []
    if args.synthetic:
        train_root, test_root = synthetic_splits(args.work / "data", args.train_items or args.items, args.items,
                                                 args.seed, parse_knobs(args.synth))
        trained = []
        for name in args.train_configs.split(","):
            config = load_embedder_config(name.strip(), [*args.overrides, f"train.device={device}"])
            out = args.work / "runs" / config.name
            with Timer() as timer:
                Trainer(config, [train_root], out).run()
            trained.append(load_runner(config, out / "best.pt", device))
            rows.append({"data": "synthetic test", "model": config.name, "trained": True,
                         "train_s": round(timer.seconds, 1), **score(trained[-1:], test_root, args.min_frame)})
        if len(trained) > 1:
            rows.append({"data": "synthetic test", "model": "+".join(r.config.name for r in trained),
                         "trained": True, **score(trained, test_root, args.min_frame)})
        rows.append({"data": "synthetic test", "model": "+".join(LITE), "trained": False,
                     **score(lite, test_root, args.min_frame)})
    if args.zero_shot:
        if not SAMPLE.is_dir():
            raise SystemExit(f"{SAMPLE} is not present")
        for runner in lite:
            rows.append({"data": "taobao_live_sample", "model": runner.config.name, "trained": False,
                         **score([runner], SAMPLE, args.min_frame)})
        rows.append({"data": "taobao_live_sample", "model": "+".join(LITE), "trained": False,
                     **score(lite, SAMPLE, args.min_frame)})
    if not rows:
        parser.error("nothing to do: give --synthetic and/or --zero-shot")
    print_table(rows, ["data", "model", "trained", "train_s", "queries", "recall@1", "recall@5", "match_acc"])
    path = write_result(args.out, "embed_accuracy", rows, {"items": args.items,
                                                           "train_items": args.train_items or args.items,
                                                           "synth": args.synth,
                                                           "overrides": args.overrides, "seed": args.seed,
                                                           "threads": torch.get_num_threads()})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
