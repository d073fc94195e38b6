"""The bundled main job: synthetic data, brief training, the full pipeline on held-out clips, a score.

``python -m pipeline.demo --out runs/demo`` needs no network and no GPU:

1. generates a train root and a held-out test root with disjoint item ids
   (``OUT/data/train``, ``OUT/data/test``; reused when already there);
2. fine-tunes the ImageNet-initialised EfficientNet-Lite0 detector (config
   ``lite0``, its stem and first two stages frozen) on the train root
   (``OUT/detector``; reused when a checkpoint of the same config is there).
   The tiny detector is not used: from random weights it learns little in a
   few minutes of CPU time;
3. embeds crops with the ImageNet Lite0 embedder as it is, which pools its
   last block's maps when untrained (``model.conv_head``: zero-shot, that
   scores higher than through the conv head). Fine-tuning it with ArcFace on
   so few identities pulls every crop towards one of them and lowers the
   held-out score; ``--embedder-epochs N`` fine-tunes it anyway
   (``OUT/embedder``);
4. writes the model set ``OUT/models.yaml`` (``pipeline.model_set``: the configs as trained, the checkpoints),
   which with the default ``--out`` is the bundled default that ``run.sh`` and the service use when no models
   are named;
5. runs the pipeline on the test root into ``OUT/run``: ``result.json``, the contest score, ``report.html``;
   then prints the ``run.sh`` and service commands that reuse the models.

The data are small (short, low-resolution clips) so that all of it fits in a
few minutes on two CPU cores; the score says the pipeline works end to end,
not what the models reach with real training (see ``bench/e2e.py``).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml
from pydantic import BaseModel

from bbox_sub.config import load_detector_config
from bbox_sub.train import train as train_detector
from dataset.errors import DataError
from dataset.synth import SynthConfig, ensure
from metric_sub.config import load_embedder_config
from metric_sub.train import Trainer
from pipeline.model_set import DEFAULT_MODEL_SET, ModelRef, ModelSet, write_model_set
from pipeline.run import format_summary, run_pipeline
from runtime.checkpoint import load_checkpoint

SYNTH = SynthConfig(shop_size=256, shop_images_min=2, shop_images_max=4, clip_frames=161, clip_width=180,
                    clip_height=320, uncatalogued_share=0.0, clutter=1)
DETECTOR_SET = ["model.detections_per_img=5", "infer.frames=[80, 100, 120, 140, 160]", "train.workers=0",
                "train.val_fraction=0", "train.eval_every=100000"]
EMBEDDER_SET = ["data.bucket_scale=0.5", "train.batch_size=8"]


def trained_with(checkpoint: Path, config: BaseModel) -> bool:
    """Whether this very config wrote the checkpoint (training saves its config in every checkpoint)."""
    if not checkpoint.is_file():
        return False
    saved = load_checkpoint(checkpoint, weights_only=False).get("config")
    return saved == config.model_dump(mode="json")


def reusable(folder: Path, final: str, last: str, config: BaseModel) -> bool:
    """Whether ``folder`` holds final weights of ``config``. A folder whose checkpoints another config wrote
    (a rerun with other steps, or a demo version that trained another network) is cleared, so that training
    starts afresh instead of failing to load or resuming the other run; a killed run of this config resumes."""
    written = {name: trained_with(folder / name, config) for name in (final, last) if (folder / name).is_file()}
    if written.get(final):
        return True
    if not all(written.values()):
        print(f"{folder} holds models of another config: training again", flush=True)
        shutil.rmtree(folder)
    return False


def run(out: Path, train_items: int, test_items: int, detector_steps: int | None, embedder_epochs: int,
        seed: int) -> dict:
    """Steps 1-4 of the module docstring; returns the pipeline summary."""
    started = time.perf_counter()
    train_root, test_root = out / "data" / "train", out / "data" / "test"
    ensure(train_root, replace(SYNTH, items=train_items, seed=seed, first_id=1))
    ensure(test_root, replace(SYNTH, items=test_items, seed=seed + 1, first_id=50_001))
    print(f"data: {train_root} ({train_items} items), {test_root} ({test_items} held-out items) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)

    steps = [] if detector_steps is None else [f"train.stages.0.iterations={detector_steps}"]
    det_cfg = load_detector_config("lite0", [*steps, *DETECTOR_SET])
    if not reusable(out / "detector", "model_final.pth", "last.pth", det_cfg):
        train_detector(det_cfg, [train_root], out / "detector", device="cpu")
    epochs = [f"train.epochs={embedder_epochs}"] if embedder_epochs else []
    emb_cfg = load_embedder_config("lite0", [*EMBEDDER_SET, *epochs])
    if embedder_epochs and not reusable(out / "embedder", "best.pt", "last.pt", emb_cfg):
        Trainer(emb_cfg, [train_root], out / "embedder").run()
    det_weights = out / "detector" / "model_final.pth"
    emb_weights = out / "embedder" / "best.pt" if embedder_epochs else None
    print(f"models ready after {time.perf_counter() - started:.0f} s", flush=True)
    models = write_models(out, det_cfg, det_weights, emb_cfg, emb_weights)

    result = run_pipeline(test_root, out / "run", models=models, device="auto")
    print(format_summary(result))
    print(f"main job finished in {time.perf_counter() - started:.0f} s")
    print(reuse_commands(out, test_root))
    return result.summary


def write_models(out: Path, det_cfg: BaseModel, det_weights: Path, emb_cfg: BaseModel,
                 emb_weights: Path | None) -> Path:
    """``OUT/models.yaml`` with the configs as trained (overrides included) beside it."""
    (out / "detector.yaml").write_text(yaml.safe_dump(det_cfg.model_dump(mode="json"), sort_keys=False))
    (out / "embedder.yaml").write_text(yaml.safe_dump(emb_cfg.model_dump(mode="json"), sort_keys=False))
    models = ModelSet(detector=ModelRef(config=str(out / "detector.yaml"), weights=det_weights),
                      embedders=[ModelRef(config=str(out / "embedder.yaml"), weights=emb_weights)])
    return write_model_set(out / "models.yaml", models)


def reuse_commands(out: Path, test_root: Path) -> str:
    """The commands that run the batch job and the service on the models just trained."""
    named = "" if (out / "models.yaml").resolve() == DEFAULT_MODEL_SET else f" --models {out / 'models.yaml'}"
    gallery = out / "gallery"
    return "\n".join([
        f"models: {out / 'models.yaml'}" + (" (the bundled default)" if not named else ""),
        "reuse them:",
        f"  ./run.sh {test_root} {out / 'run2'}{named}",
        f"  python -m service rebuild{named} --data-dir {gallery} --run {out / 'run'}",
        f"  python -m service{named} --data-dir {gallery} --root {test_root}",
    ])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--train-items", type=int, default=16)
    parser.add_argument("--test-items", type=int, default=30)
    parser.add_argument("--detector-steps", type=int, help="detector training steps (default: the lite0 config's)")
    parser.add_argument("--embedder-epochs", type=int, default=0,
                        help="fine-tune the Lite0 embedder this long on the train items (default 0: ImageNet weights)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        run(args.out, args.train_items, args.test_items, args.detector_steps, args.embedder_epochs, args.seed)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
