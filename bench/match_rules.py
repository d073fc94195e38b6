"""The voting rules side by side: the seed's, each deviation from it, and the bundled config, on cached runs.

``python -m bench.match_rules --run NAME OUT_DIR DATA_ROOT [--run ...] [--config NAME YAML ...] [--out JSON]``

Each ``OUT_DIR`` is a pipeline output folder for the annotated ``DATA_ROOT``
(its ``embed/`` stage is reused, so the table costs seconds). The gallery
is searched once per direction and every rule set re-votes the same
retrievals, so the rows differ by the rules alone. Variants, each adding
one change to the row above it:

* ``seed``: the seed's rules (best-scoring voters' boxes, any frame, greedy);
* ``+frame_step``: prefer the frames the contest annotates;
* ``+nearest boxes``: report the two sources' closest boxes;
* ``+hungarian``: one global one-to-one assignment;
* ``clip_to_shop``: the last row in the reverse direction;
* ``bundled``: ``metric_sub/config/match.yaml`` as it is;
* one row per ``--config NAME YAML``, e.g. what ``metric_sub.calibrate`` wrote
  for a validation root, scored here on held-out runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import print_table, write_result
from dataset.layout import load_dataset
from dataset.score import score, validate_result
from metric_sub.embed import load_embeddings
from metric_sub.match import decide, load_match_config, retrieve
from metric_sub.vote import SEED_RULES, VoteRules

RESULT = Path(__file__).resolve().parent / "results" / "match_rules.json"
STEPS: tuple[tuple[str, dict], ...] = (
    ("seed", {}),
    ("+frame_step", {"frame_step": 40}),
    ("+nearest boxes", {"boxes": "nearest"}),
    ("+hungarian", {"assignment": "hungarian"}),
    ("clip_to_shop", {"direction": "clip_to_shop"}),
)
"""Each variant's change on top of the one before it, starting from the seed's rules."""


def cumulative_variants() -> dict[str, VoteRules]:
    rules, variants = SEED_RULES, {}
    for name, change in STEPS:
        rules = rules.model_copy(update=change)
        variants[name] = rules
    return variants


VARIANTS = cumulative_variants()


def compare(name: str, run: Path, root: Path, configs: dict[str, VoteRules] | None = None) -> list[dict]:
    """One row per variant, the bundled config and each of ``configs`` on one cached run."""
    data = load_dataset(root)
    embeddings, meta = load_embeddings(run / "embed")
    bundled = load_match_config()
    variants = {**VARIANTS, "bundled": bundled.vote, **(configs or {})}
    retrieved = {}
    rows = []
    for variant, rules in variants.items():
        if rules.direction not in retrieved:
            retrieved[rules.direction] = retrieve(embeddings, meta["rows"], rules.direction, bundled.index, "cpu")
        matched = decide(retrieved[rules.direction], rules, data.videos)
        report = score(validate_result(matched.result, f"{name} with {variant} rules"), data).to_dict()
        levels = report["levels"]
        rows.append({"run": name, "rules": variant, "clips": len(data.videos), "matched": len(matched.result),
                     "score": report["final"], "f1_item": levels["item"]["f1"],
                     "f1_frame": levels["frame"]["f1"], "f1_box": levels["box"]["f1"],
                     "failures": report["diagnostics"]["failures"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs=3, action="append", required=True, metavar=("NAME", "OUT_DIR", "ROOT"),
                        help="a name for the table, a pipeline output folder and the annotated root it ran on")
    parser.add_argument("--config", nargs=2, action="append", default=[], metavar=("NAME", "YAML"),
                        help="a match config to score as one more row (its vote section)")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--note", default="", help="what the runs are (models, data), kept in the JSON")
    args = parser.parse_args(argv)
    configs = {name: load_match_config(Path(path)).vote for name, path in args.config}
    rows = [row for name, run, root in args.run for row in compare(name, Path(run), Path(root), configs)]
    print_table(rows, ["run", "rules", "clips", "matched", "score", "f1_item", "f1_frame", "f1_box"])
    write_result(args.out, "match_rules", rows, {"runs": args.run, "configs": args.config, "note": args.note})


if __name__ == "__main__":
    main()
