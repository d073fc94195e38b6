"""Command line: ``python -m dataset.synth --out DIR --items N --seed S [knobs]``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dataset.synth.config import SynthConfig, knob_help
from dataset.synth.generate import generate


def build_parser() -> argparse.ArgumentParser:
    """Every ``SynthConfig`` knob becomes an option with its documented default."""
    parser = argparse.ArgumentParser(
        prog="python -m dataset.synth",
        description="Write a synthetic Taobao-Live-style dataset root (contest layout, exact ground truth).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset root to write")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (changes speed, never the data)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    parser.add_argument("--no-contact-sheet", action="store_true", help="skip contact_sheet.png")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    knobs = parser.add_argument_group("data knobs (stored in synth_manifest.json)")
    for name, default, text in knob_help():
        knobs.add_argument("--" + name.replace("_", "-"), dest=name, type=type(default), default=default, help=text)
    return parser


def progress_printer(config: SynthConfig, workers: int, every_s: float = 5.0) -> Callable[[int, int], None]:
    """Progress lines on stderr: what is to be rendered at once, then as tasks finish, at most one line per
    ``every_s`` seconds with the time so far and an estimate of what is left. A clip takes long to render,
    so a line per share of the tasks could leave the terminal silent for minutes."""
    started = time.perf_counter()
    last = -every_s

    def progress(done: int, total: int) -> None:
        nonlocal last
        elapsed = time.perf_counter() - started
        if done == 0:
            clips = config.items + config.uncatalogued_clips
            print(f"rendering {total} tasks: {clips} clips of {config.clip_frames} frames at "
                  f"{config.clip_width}x{config.clip_height} and the shop images of {config.items} items, "
                  f"with {workers} worker{'s' if workers != 1 else ''}", file=sys.stderr, flush=True)
        elif done == total or elapsed - last >= every_s:
            left = elapsed / done * (total - done)
            print(f"{done}/{total} tasks, {elapsed:.0f} s" + (f", about {left:.0f} s left" if done < total else ""),
                  file=sys.stderr, flush=True)
        else:
            return
        last = elapsed

    return progress


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = {name: getattr(args, name) for name, _, _ in knob_help()}
    try:
        config = SynthConfig(**values)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    progress = None if args.quiet else progress_printer(config, args.workers)
    try:
        summary = generate(args.out, config, workers=args.workers, overwrite=args.overwrite,
                           contact_sheet=not args.no_contact_sheet, progress=progress)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
