"""The benchmark page: every result in ``bench/results/`` as markdown, written to ``bench/README.md``.

Run from the repository root::

    python -m bench.page [--results bench/results] [--out bench/README.md] [--check]

Figures typed into a readme by hand drift from the JSON they came from; this page is generated from the
JSON alone, so the same files always give the same bytes. ``--check`` writes nothing and exits 1 when the
page on disk differs from what the results give, so CI catches a result committed without its page.

Each benchmark gets a section (what it measures, the command that reproduces it) and each results file a
table: its rows' columns in the order the benchmark wrote them, named by the machine it ran on and its
precision where the file records one, with the settings and a footer of date and package versions below.
Files that are not results JSON are listed as other artefacts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import format_markdown_table, format_value

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PAGE = BENCH / "README.md"

BENCHMARKS: dict[str, tuple[str, str]] = {
    "decode": ("Decoding the frames the pipeline samples from a clip, per method (decord2, OpenCV sequential, "
               "OpenCV seeking, and every frame for the raw rate), with each method's pixels checked against "
               "decord's.", "python -m bench.decode"),
    "detect": ("Detector throughput per config on random weights with calibrated norm statistics, with "
               "torchvision's Faster R-CNN R50-FPN timed on the same frames as the yardstick.",
               "python -m bench.detect"),
    "detect_accuracy": ("Detector COCO AP50 and AP on a synthetic validation split after training on a disjoint "
                        "synthetic split (or a given checkpoint scored with `--weights`).",
                        "python -m bench.detect_accuracy --config tiny"),
    "embed": ("Embedder throughput in crops per second per config and for the ensemble, at the seed's bucket "
              "sizes.", "python -m bench.embed --configs tiny,lite0"),
    "embed_accuracy": ("Embedder retrieval accuracy: recall from shop-image crops to clip crops on ground-truth "
                       "boxes, trained on synthetic data or zero-shot on the real sample.",
                       "python -m bench.embed_accuracy --synthetic --train-configs tiny --zero-shot"),
    "index": ("Gallery search: exact search (FAISS, torch) against IVF and IVF-PQ, with build time, memory, "
              "throughput, latency and recall against exact.", "python -m bench.index"),
    "demo": ("The main job as a new user runs it, per seed from nothing: data generated, detector trained, "
             "pipeline run; wall time, CPU time, precision and contest score.", "python -m bench.demo"),
    "e2e": ("The whole pipeline per setup: seconds per stage, clips per second and the contest score.",
            "python -m bench.e2e"),
    "match_rules": ("Contest score of the seed's voting rules, each deviation from them and the bundled or "
                    "calibrated config, re-voting the same cached pipeline runs.",
                    "python -m bench.match_rules --run NAME OUT DATA_ROOT"),
    "service_match": ("The service's matching alone, per query kind and gallery change, against galleries of "
                      "growing size.", "python -m bench.service_match"),
    "service_match_backends": ("The gallery backends side by side (local FAISS + SQLite, Milvus standalone): "
                               "load, index, match, search, add and delete latency, recall against exact "
                               "search, and memory per replica.",
                               "python -m bench.service_match --backend local,milvus"),
    "service_load": ("Concurrent clients against the REST service: latency percentiles, throughput, errors and "
                     "the server's peak memory.", "python -m bench.service_load"),
}
"""Section order and one line plus a command per benchmark; a benchmark missing here still gets a section."""

PRECISION_KEYS = ("precision", "dtype")
"""``extra`` keys that name the precision a whole file ran at."""


@dataclass(frozen=True)
class Result:
    """One results file as the page needs it."""

    file: str
    name: str
    timestamp: str
    machine: dict[str, Any]
    rows: list[dict[str, Any]]
    extra: dict[str, Any]


def load_result(path: Path) -> Result | None:
    """The file as a benchmark result, or ``None`` when it is not one (another artefact)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("rows"), list)):
        return None
    machine, extra = data.get("machine"), data.get("extra")
    return Result(file=path.name, name=data["name"], timestamp=str(data.get("timestamp") or "-"),
                  machine=machine if isinstance(machine, dict) else {},
                  rows=[row if isinstance(row, dict) else {"value": row} for row in data["rows"]],
                  extra=extra if isinstance(extra, dict) else {})


def compact(value: object) -> str:
    """Nested values on one line, their leaves formatted as the tables format numbers."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {compact(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(compact(item) for item in value) + "]"
    return format_value(value)


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every key of every row, in the order first seen: benchmarks add columns to some rows only."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def flat_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with nested values turned into compact text; scalars stay as they are, for the table's alignment."""
    return [{key: compact(value) if isinstance(value, (dict, list)) else value for key, value in row.items()}
            for row in rows]


def hardware(machine: dict[str, Any]) -> str:
    """The GPU a result ran on, or its CPU model on a CPU-only machine."""
    accelerator = machine.get("accelerator")
    if isinstance(accelerator, dict) and accelerator.get("name"):
        count = accelerator.get("count")
        return f"{count} × {accelerator['name']}" if isinstance(count, int) and count > 1 else str(accelerator["name"])
    return str(machine.get("cpu_model") or "unknown machine")


def precision(extra: dict[str, Any]) -> str | None:
    """The precision the whole file ran at, where its settings name one."""
    for key in PRECISION_KEYS:
        if isinstance(extra.get(key), str):
            return extra[key]
    return None


def table_heading(result: Result, link: str) -> str:
    """Hardware and precision first, then the file (linked), which keeps every heading unique."""
    label = ", ".join(part for part in (hardware(result.machine), precision(result.extra)) if part)
    return f"### {label} · [`{result.file}`]({link})"


def settings_line(extra: dict[str, Any]) -> str | None:
    """The benchmark's settings (``extra``), one ``key`` value pair after another."""
    if not extra:
        return None
    return "Settings: " + " · ".join(f"`{key}` {_prose(compact(value))}" for key, value in extra.items())


def _prose(text: str) -> str:
    """Free text from a result, with the characters markdown would read as emphasis or HTML escaped."""
    for char in ("\\", "*", "<"):
        text = text.replace(char, "\\" + char)
    return text


def footer_line(result: Result) -> str:
    """When, on how much of which machine, and with which packages: what a reader needs to compare runs."""
    machine = result.machine
    parts = [result.timestamp]
    cpus = f"{machine.get('cpu_usable', '-')} of {machine.get('cpu_count', '-')} CPUs"
    if isinstance(machine.get("accelerator"), dict):
        cpus = f"host {machine.get('cpu_model') or '-'}, {cpus}"
    parts.append(f"{cpus}, load {format_value(machine.get('load_average_1min'))}")
    accelerator = machine.get("accelerator")
    if isinstance(accelerator, dict):
        parts.append(f"CUDA {accelerator.get('cuda') or '-'}, torch {accelerator.get('torch') or '-'}")
    packages = machine.get("packages") if isinstance(machine.get("packages"), dict) else {}
    parts.append(", ".join([f"Python {machine.get('python') or '-'}",
                            *(f"{name} {version}" for name, version in packages.items())]))
    return "<sub>" + " · ".join(parts) + "</sub>"


def result_block(result: Result, link: str) -> str:
    """One file: heading, table, settings and footer."""
    rows = flat_rows(result.rows)
    table = format_markdown_table(rows, columns_of(rows)) if rows else "No rows."
    parts = [table_heading(result, link), table, settings_line(result.extra), footer_line(result)]
    return "\n\n".join(part for part in parts if part)


def describe(name: str) -> tuple[str, str]:
    """The page's line and command for a benchmark, with a plain fallback for one not listed yet."""
    return BENCHMARKS.get(name, (f"Results of `bench.{name}`.", f"python -m bench.{name}"))


def section(name: str, results: Sequence[Result], links: dict[str, str]) -> str:
    """A benchmark's heading, what it measures, how to rerun it, then one table per file."""
    text, command = describe(name)
    head = f"## {name}\n\n{text}\n\nReproduce: `{command}`"
    return "\n\n".join([head, *(result_block(result, links[result.file]) for result in results)])


def artefact_line(path: Path, link: str, results: Sequence[tuple[Result, str]]) -> str:
    """A file that is not a result: its leading comment, if any, and the results whose JSON names it."""
    line = f"- [{path.name}]({link})"
    comment = _leading_comment(path)
    if comment:
        line += f": {_prose(comment)}"
    users = [result.file for result, raw in results if path.name in raw]
    if users:
        line += " (used by " + ", ".join(f"`{user}`" for user in users) + ")"
    return line


def _leading_comment(path: Path) -> str | None:
    """The first line of a text artefact when it is a ``#`` comment, which is where a YAML says what it is."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not first.startswith("#"):
        return None
    return first.lstrip("#").strip() or None


def _link(path: Path, page: Path) -> str:
    """A link from the page to a file, relative so that it works on any checkout and host."""
    return Path(os.path.relpath(path.resolve(), page.resolve().parent)).as_posix()


def _section_order(names: set[str]) -> list[str]:
    """The described benchmarks in their listed order, then any others alphabetically."""
    return [name for name in BENCHMARKS if name in names] + sorted(names - set(BENCHMARKS))


def _results_files(results_dir: Path) -> list[Path]:
    """The folder's files by name, so that neither the file system's order nor hidden files change the page."""
    return sorted((path for path in results_dir.iterdir() if path.is_file() and not path.name.startswith(".")),
                  key=lambda path: path.name)


def _page_head(order: Sequence[str], results_link: str) -> list[str]:
    """Title, where the page comes from, and links to its sections."""
    return ["# Benchmark results",
            f"Generated by `python -m bench.page` from the files in [{results_link}/]({results_link}/); do not "
            "edit by hand. `python -m bench.page --check` fails when this page differs from what they give.",
            "Sections: " + ", ".join(f"[{name}](#{name})" for name in order)]


def build_page(results_dir: Path, page: Path) -> str:
    """The whole page for the files in ``results_dir`` as they would read from ``page``; no clock, no cwd."""
    files = _results_files(results_dir)
    links = {path.name: _link(path, page) for path in files}
    loaded = [(path, load_result(path)) for path in files]
    results = [(result, path.read_text(encoding="utf-8")) for path, result in loaded if result]
    others = [path for path, result in loaded if result is None]
    by_name: dict[str, list[Result]] = {}
    for result, _ in results:
        by_name.setdefault(result.name, []).append(result)
    order = _section_order(set(by_name))
    body = [section(name, by_name[name], links) for name in order]
    if others:
        body.append("## Other artefacts\n\n"
                    + "\n".join(artefact_line(path, links[path.name], results) for path in others))
    return "\n\n".join(_page_head(order, _link(results_dir, page)) + body) + "\n"


def check(page: Path, expected: str) -> int:
    """0 when the page on disk is byte for byte what the results give, else 1 with one line saying how to fix it."""
    current = page.read_bytes() if page.is_file() else None
    if current == expected.encode("utf-8"):
        return 0
    state = "is missing" if current is None else "is stale"
    print(f"{_shown(page)} {state}: regenerate it from its results with python -m bench.page", file=sys.stderr)
    return 1


def _shown(path: Path) -> str:
    """A path as a CI log should show it: relative to where the command ran when it lies below."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page, or with ``--check`` only compare it; the exit status is what CI reads."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of results files")
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to write or check")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the page differs from what the results give")
    args = parser.parse_args(argv)
    expected = build_page(args.results, args.out)
    if args.check:
        return check(args.out, expected)
    args.out.write_text(expected, encoding="utf-8", newline="\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
