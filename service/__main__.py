"""Command line: serve the API, or rebuild the gallery from a batch run or a dataset root.

    python -m service --data-dir DIR [--models models.yaml] [--config service.yaml] [--host 127.0.0.1 --port 8000]
    python -m service rebuild --data-dir DIR --run RUN_OUT_DIR [--config service.yaml]
    python -m service rebuild --data-dir DIR --root DATASET_ROOT [--config service.yaml]
    python -m service migrate --from local --to milvus [--data-dir DIR] [--config service.yaml]

Both read the same settings (file, ``SHOPMATCH_*`` environment, these
flags). ``rebuild --run`` takes the boxes and vectors a ``run.sh`` output
folder holds (made with the same models; ``service.ingest``), ``rebuild
--root`` embeds every item folder and clip of the root with the configured
models; either replaces the gallery in one atomic change; run it
while no server uses the data directory (a running server keeps serving its
loaded generation until restarted). Both fill the backend the settings name
(``gallery.backend``: ``local``, or ``milvus`` with ``gallery.uri``, whose
replicas see the new generation at their next request). ``migrate`` copies the
gallery of one backend into the other in one atomic change (the settings give
both places; entries get the migration's time as ``added_at``).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dataset.errors import DataError, IssueLog
from dataset.layout import load_dataset
from service.errors import Refused
from service.logs import setup_logging
from service.settings import Settings, load_settings

log = logging.getLogger("service")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="gallery folder (settings: data_dir)")
    parser.add_argument("--config", type=Path, help="settings YAML (also $SHOPMATCH_CONFIG_FILE)")
    parser.add_argument("--device", help="auto, cpu or cuda[:k]")
    parser.add_argument("--models", type=Path, help="model set (models.yaml; settings: models; default: the bundled "
                                                    "one that python -m pipeline.demo writes)")


async def rebuild(settings: Settings, root: Path, concurrency: int = 4) -> tuple[int, int, list[str]]:
    """Embed every item and clip of ``root`` and make them the whole gallery; returns counts and skips."""
    from service.engine import Engine
    from service.gallery import open_gallery
    from service.metrics import Metrics

    issues = IssueLog()
    data = load_dataset(root, issues)
    engine = Engine(settings, Metrics())
    engine.wait_for_pixels = True  # sources embedded together wait for room in the pixel budget, not fail
    store = open_gallery(settings, engine.dim, engine.models, str(engine.device), fresh=True)
    skipped = [str(issue) for issue in issues.errors]
    gate = asyncio.Semaphore(concurrency)
    done = 0
    total = len(data.items) + len(data.videos)

    async def one(coro, name: str):
        nonlocal done
        async with gate:
            try:
                return await coro
            except Refused as exc:
                skipped.append(f"{name}: {exc.message}")
                return None
            finally:
                done += 1
                if done % 20 == 0 or done == total:
                    log.info("rebuild: %d / %d sources embedded", done, total)

    try:
        jobs = [one(engine.embed_item(item.item_id, [im.path for im in item.images], str(root / "image" /
                                      item.item_id), strict=False), f"item {item.item_id}")
                for item in data.items.values()]
        jobs += [one(engine.embed_clip(video.video_id, video.path, str(video.path)), f"clip {video.video_id}")
                 for video in data.videos.values()]
        sources = [s for s in await asyncio.gather(*jobs) if s is not None]
        snapshot = store.replace_all(sources)
    finally:
        engine.close()
        store.close()
    return snapshot.count("item"), snapshot.count("clip"), skipped


def rebuild_from_run(settings: Settings, run_dir: Path) -> tuple[int, int, list[str]]:
    """Make the gallery exactly what the batch run in ``run_dir`` encoded; returns counts and skips."""
    from runtime.device import pick_device
    from service.engine import model_identity
    from service.gallery import open_gallery
    from service.ingest import run_sources

    models = settings.model_set()
    identity = model_identity(models)
    sources, skipped = run_sources(run_dir, identity, models)
    dim = sum(len(s.vectors[0]) for s in sources[:1]) or None
    if dim is None:
        raise DataError(run_dir, "the run found no boxes: nothing to put in the gallery")
    store = open_gallery(settings, dim, identity, str(pick_device(settings.device)), fresh=True)
    try:
        snapshot = store.replace_all(sources)
    finally:
        store.close()
    return snapshot.count("item"), snapshot.count("clip"), skipped


def migrate(settings: Settings, source: str, target: str) -> tuple[int, int]:
    """Copy the gallery of backend ``source`` into backend ``target`` (replacing what it held); returns counts."""
    from service.gallery import GalleryError, open_gallery
    from service.gallery.local import GalleryStore

    if source == target:
        raise GalleryError(f"--from and --to are both {source}")
    place = {name: settings.model_copy(update={"gallery": settings.gallery.model_copy(update={"backend": name})})
             for name in (source, target)}
    if source == "milvus":
        from service.gallery.milvus import MilvusGallery

        identity = MilvusGallery.stored_identity(place[source].gallery)
    else:
        identity = GalleryStore.stored_identity(settings.data_dir)
    if identity is None:
        raise GalleryError(f"the {source} gallery is empty: nothing to migrate")
    dim, models = identity
    reader = open_gallery(place[source], dim, models)
    try:
        sources = list(reader.export())
    finally:
        reader.close()
    writer = open_gallery(place[target], dim, models, fresh=True)
    try:
        snapshot = writer.replace_all(sources)
    finally:
        writer.close()
    return snapshot.count("item"), snapshot.count("clip")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["migrate"]:
        parser = argparse.ArgumentParser(prog="python -m service migrate",
                                         description="Copy the gallery of one backend into the other.")
        _common(parser)
        parser.add_argument("--from", dest="source", choices=("local", "milvus"), required=True)
        parser.add_argument("--to", dest="target", choices=("local", "milvus"), required=True)
        args = parser.parse_args(argv[1:])
    elif argv[:1] == ["rebuild"]:
        parser = argparse.ArgumentParser(prog="python -m service rebuild", description="Rebuild the gallery.")
        _common(parser)
        given = parser.add_mutually_exclusive_group(required=True)
        given.add_argument("--run", type=Path, help="a run.sh output folder made with the service's models: "
                                                    "its boxes and vectors fill the gallery, no model runs")
        given.add_argument("--root", type=Path, help="dataset root in the contest layout, embedded anew")
        args = parser.parse_args(argv[1:])
    else:
        parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n\n")[0])
        _common(parser)
        parser.add_argument("--host", help="listen address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, help="listen port (default 8000; 0 picks a free one)")
        parser.add_argument("--root", dest="roots", type=Path, action="append",
                            help="a data root for path requests (repeatable; settings: roots)")
        args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items()
                 if key not in ("config", "root", "run", "source", "target")}
    try:
        settings = load_settings(args.config, **overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    if argv[:1] == ["migrate"]:
        from service.gallery import GalleryError

        try:
            items, clips = migrate(settings, args.source, args.target)
        except GalleryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"migrated {items} items, {clips} clips from {args.source} to {args.target}")
        return 0
    if argv[:1] == ["rebuild"]:
        try:
            if args.run is not None:
                items, clips, skipped = rebuild_from_run(settings, args.run)
            else:
                items, clips, skipped = asyncio.run(rebuild(settings, args.root))
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for line in skipped:
            print(f"skipped {line}")
        print(f"gallery {settings.data_dir}: {items} items, {clips} clips; {len(skipped)} skipped")
        return 0
    try:  # no models to serve, or a matcher config it cannot honour: one line, not a traceback
        from service.engine import load_rules

        load_rules(settings, settings.model_set())
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
