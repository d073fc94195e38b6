"""Synthetic benchmark generator in the contest layout, with exact ground truth.

``generate(out_dir, SynthConfig(...))`` (or ``python -m dataset.synth``) writes
shop images and live-stream clips of procedurally designed garments, with
colour variants, front and back views, worn and flat displays, distractors,
motion, blur, lighting change, UI overlays and H.264 compression, plus clips
whose garment is not in the catalogue.
"""
from dataset.synth.config import SynthConfig
from dataset.synth.generate import ensure, generate

__all__ = ["SynthConfig", "ensure", "generate"]
