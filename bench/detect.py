"""Detector throughput: frames/s at a batch of 540x960 frames resized to short side 608, per config.

``python -m bench.detect [--configs seed_vovnet99,vovnet39,lite2,tiny] [--batch 16] [--repeats 5] [--device auto]``

Each config runs the full inference path of ``bbox_sub.detect.BatchDetector``
(upload, batched resize, normalisation, backbone + FPN, RPN, RoI heads, box
selection) on random weights whose norm statistics are first set from the
frames themselves (``calibrate_norms``), so the RPN keeps its full proposal
count per frame as a trained model would (``--set
model.rpn_post_nms_top_n_test=N`` changes it); the ``proposals`` column is the
count that reached the RoI head, measured. torchvision's reference ``fasterrcnn_resnet50_fpn`` is timed in
the same run on the same frames as the yardstick. Both run with ``--precision`` (bf16 by default) and
channels_last where ``runtime.precision`` finds them to pay: on CUDA, and on CPUs with bf16 instructions.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from bbox_sub.config import ModelConfig, Precision, load_detector_config
from bbox_sub.detect import BatchDetector
from bbox_sub.model import Detector, build_detector
from bbox_sub.resize import to_chw
from bench.common import measure, print_table, write_result
from runtime.device import pick_device
from runtime.fuse import NORMS
from runtime.precision import autocast, channels_last_pays, effective_dtype

RESULT = Path(__file__).resolve().parent / "results" / "detect.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def calibrate_norms(model: nn.Module, run: Callable[[], object]) -> None:
    """Set every norm's running statistics from its own input during one ``run()``, layer after layer.

    Random weights with the identity statistics a fresh norm holds let
    activations grow through a deep residual backbone (to ~8e5 after
    VoVNet-99), so every RPN box degenerates and the RoI head gets no
    proposals: the timed path would skip the work a trained detector does.
    Normalising each layer by its actual input is what training would reach.
    """
    def set_statistics(norm: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].float()
        norm.running_mean.copy_(x.mean((0, 2, 3)))
        norm.running_var.copy_(x.var((0, 2, 3)))

    handles = [m.register_forward_pre_hook(set_statistics) for m in model.modules() if isinstance(m, NORMS)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()


def untrained_detector(cfg: ModelConfig, frames: list[np.ndarray], device: torch.device) -> Detector:
    """Random weights with norm statistics calibrated on ``frames`` (in float32, before any folding)."""
    model = build_detector(cfg)
    plain = BatchDetector(model, device, precision="fp32", channels_last=False, fuse=False)
    calibrate_norms(model, lambda: plain(frames, 608, 4000))
    return model


def noise_frames(count: int) -> list[np.ndarray]:
    """Portrait 540x960 RGB frames of uniform noise, the same every run."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (960, 540, 3), dtype=np.uint8) for _ in range(count)]


class ProposalCount:
    """Proposals per picture that reached ``roi_heads`` in the last call (ours and torchvision's take the
    same arguments)."""

    def __init__(self, roi_heads: nn.Module) -> None:
        self.per_picture = 0.0
        roi_heads.register_forward_pre_hook(self._count)

    def _count(self, _module: nn.Module, args: tuple) -> None:
        proposals = args[1]
        self.per_picture = sum(len(p) for p in proposals) / max(len(proposals), 1)


def time_config(name: str, frames: list[np.ndarray], device: torch.device, precision: Precision, repeats: int,
                backbone_only: bool, overrides: list[str]) -> dict:
    """The full path; with ``backbone_only`` also backbone + FPN alone on the same prepared batch, so the
    table shows what box selection and the RoI head cost on top."""
    cfg = load_detector_config(name, overrides)
    detector = BatchDetector(untrained_detector(cfg.model, frames, device), device, precision=precision,
                             channels_last=True)
    proposals = ProposalCount(detector.model.roi_heads)

    def run() -> None:
        detector(frames, 608, 4000)
        _sync(device)

    seconds = measure(run, repeats=repeats, warmup=1)
    row = {"model": name, "backbone": cfg.model.backbone, "device": device.type, "batch": len(frames),
           "proposals": proposals.per_picture, "seconds_per_batch": seconds,
           "frames_per_s": len(frames) / seconds}
    if backbone_only:
        images = detector.prepare(frames, 608, 4000)

        @torch.inference_mode()
        def run_backbone() -> None:
            with autocast(device, precision):
                detector.model.backbone(images.tensors)
            _sync(device)

        row["backbone_frames_per_s"] = len(frames) / measure(run_backbone, repeats=repeats, warmup=1)
    return row


def time_reference(frames: list[np.ndarray], device: torch.device, precision: Precision, repeats: int) -> dict:
    """torchvision's own pipeline (its transform resizes to 608 with max 4000, as the seed's frames)."""
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=608, max_size=4000).to(device).eval()
    images = list(to_chw(frames, device).float() / 255)
    calibrate_norms(model, lambda: model(images))
    if channels_last_pays(device, precision):
        model = model.to(memory_format=torch.channels_last)
    proposals = ProposalCount(model.roi_heads)

    @torch.inference_mode()
    def run() -> None:
        with autocast(device, precision):
            model(list(to_chw(frames, device).float() / 255))
        _sync(device)

    seconds = measure(run, repeats=repeats, warmup=1)
    return {"model": "torchvision fasterrcnn_resnet50_fpn", "backbone": "resnet50", "device": device.type,
            "batch": len(frames), "proposals": proposals.per_picture, "seconds_per_batch": seconds,
            "frames_per_s": len(frames) / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="seed_vovnet99,vovnet39,lite2,tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 10 on CUDA, 2 on CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value in every config, e.g. model.rpn_post_nms_top_n_test=300")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                        help="autocast dtype where the device runs it (see runtime.precision.autocast_dtype)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--backbone-only", action="store_true",
                        help="also time backbone + FPN alone (what the box selection costs on top)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    repeats = args.repeats or (10 if device.type == "cuda" else 2)
    frames = noise_frames(args.batch)
    torch.manual_seed(0)
    rows = [time_config(name.strip(), frames, device, args.precision, repeats, args.backbone_only, args.set)
            for name in args.configs.split(",") if name.strip()]
    if not args.no_reference:
        rows.append(time_reference(frames, device, args.precision, repeats))
    columns = ["model", "backbone", "device", "batch", "proposals", "seconds_per_batch", "frames_per_s"]
    if args.backbone_only:
        columns.append("backbone_frames_per_s")
    print_table(rows, columns)
    write_result(args.out, "detect", rows, {"frame": "540x960 portrait", "short_side": 608, "repeats": repeats,
                                           "overrides": args.set,
                                           "precision": effective_dtype(device, args.precision),
                                           "threads": torch.get_num_threads()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
