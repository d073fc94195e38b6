"""Command line: score a result.json against annotated dataset roots.

    python -m dataset.score --pred result.json --data DIR [--data DIR2 ...]
                            [--frame-tolerance N] [--json report.json]

Prints the per-level table, the final score and diagnostics. Exit code 0 on
success; 2 with a one-line error naming the file (and the JSON path) when the
result file is malformed or a data root is unusable.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dataset.errors import DataError, IssueLog
from dataset.jsonio import write_json_atomic
from dataset.layout import load_dataset
from dataset.score.metric import score
from dataset.score.result_file import load_result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dataset.score", description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, type=Path, help="the result.json to score")
    parser.add_argument("--data", required=True, type=Path, action="append",
                        help="an annotated dataset root (repeat for several parts)")
    parser.add_argument("--frame-tolerance", type=int, default=0, metavar="N",
                        help="accept the nearest annotated frame within N frames (default 0: exact, "
                             "the participants' rule)")
    parser.add_argument("--json", type=Path, metavar="REPORT", help="also write the full report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.frame_tolerance < 0:
        print(f"error: --frame-tolerance {args.frame_tolerance}: must be >= 0", file=sys.stderr)
        return 2
    issues = IssueLog()
    try:
        predictions = load_result(args.pred, issues)
        dataset = load_dataset(args.data, issues)
        report = score(predictions, dataset, args.frame_tolerance)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if issues.issues:
        print(f"input issues: {len(issues.errors)} errors, {len(issues.warnings)} warnings (logged above)",
              file=sys.stderr)
    print(report.format_table())
    if args.json is not None:
        write_json_atomic(args.json, report.to_dict(), indent=2)
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
