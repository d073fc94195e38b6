"""What the routes share: the settings, the metrics and, once started, the engine and the gallery."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from service.engine import Engine
from service.errors import ApiError
from service.gallery import Entry, Gallery, GalleryError, Snapshot, open_gallery
from service.metrics import Metrics
from service.paths import relative_to_roots
from service.schemas import EntryOut, ServerStatus
from service.settings import Settings


class Service:
    """What the routes share: settings, metrics, and once started the engine and the gallery."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.store: Gallery | None = None
        self.problem: str | None = "starting"
        self.voter = ThreadPoolExecutor(1, thread_name_prefix="gallery-votes")

    def start(self) -> None:
        self.engine = Engine(self.settings, self.metrics)
        try:
            self.store = open_gallery(self.settings, self.engine.dim, self.engine.models, str(self.engine.device))
            self.store.on_change = self._precompute_votes
            self._precompute_votes(self.store.snapshot)
            self.problem = None
        except GalleryError as exc:
            self.problem = self._without_data_dir(str(exc))
            logging.getLogger(__name__).error("gallery unusable: %s", exc)
        self.metrics.gauge("shopmatch_gallery_entries", "Indexed items and clips.", self._entries, ("kind",))
        self.metrics.gauge("shopmatch_gallery_vectors", "Indexed box vectors.", self._vectors, ("kind",))
        self.metrics.gauge("shopmatch_gallery_votes_ready",
                           "1 once the current gallery's own votes are computed (until then a match waits for them).",
                           lambda: {(): float(self.store is not None and self.engine is not None
                                              and self.engine.matcher.has_votes(self.store.snapshot))})
        self.metrics.gauge("shopmatch_requests_in_progress", "Requests admitted to model work.",
                           lambda: {(): self.engine.admission.active if self.engine else 0})
        self.metrics.gauge("shopmatch_batch_queue_depth", "Jobs waiting for a model call.",
                           lambda: {(b.name,): b.depth for b in self._batchers()}, ("model",))

    def _without_data_dir(self, text: str) -> str:
        """A message as answers may show it: the gallery folder named ``data_dir``, not by its server path."""
        folder = self.settings.data_dir
        return text.replace(str(folder.resolve()), "data_dir").replace(str(folder), "data_dir")

    def _precompute_votes(self, snapshot: Snapshot) -> None:
        """Vote the gallery against itself now, in the background, instead of in the first match after a change.

        That vote searches every group box against the whole gallery (its time grows with the gallery:
        ``gallery_votes_s`` in bench/results/service_match.json), so a query arriving meanwhile still waits for
        it; a snapshot already replaced is skipped.
        """
        def run() -> None:
            if self.store is not None and self.store.snapshot is snapshot and self.engine is not None:
                self.engine.matcher.gallery_votes(snapshot)

        self.voter.submit(run)

    def _batchers(self) -> list:
        return [self.engine.detect_batcher, self.engine.embed_batcher] if self.engine else []

    def _entries(self) -> dict[tuple[str, ...], float]:
        snap = self.store.snapshot if self.store else None
        return {(k,): snap.count(k) if snap else 0 for k in ("item", "clip")}

    def _vectors(self) -> dict[tuple[str, ...], float]:
        snap = self.store.snapshot if self.store else None
        return {(k,): len(snap.sides[k]) if snap else 0 for k in ("item", "clip")}

    def stop(self) -> None:
        self.voter.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()
        if self.store is not None:
            self.store.close()

    def ready(self) -> tuple[Engine, Gallery]:
        if self.problem is not None or self.engine is None or self.store is None:
            raise ApiError(503, "not_ready", self.problem or "starting", {"Retry-After": "5"})
        return self.engine, self.store

    def status(self) -> ServerStatus:
        """Readiness with its reason, the models and the gallery's size: for operators (behind the key)."""
        ready = self.problem is None and self.engine is not None and self.store is not None
        snap = self.store.snapshot if self.store is not None else None
        described = self.engine.describe() if self.engine is not None else {}
        return ServerStatus(status="ready" if ready else "not_ready", problem=None if ready else self.problem,
                            generation=snap.generation if snap else None,
                            items=snap.count("item") if snap else None, clips=snap.count("clip") if snap else None,
                            device=described.get("device"), dim=described.get("dim"),
                            models=described.get("models"), vote=described.get("vote"))

    def shown_entry(self, entry: Entry) -> EntryOut:
        """An entry as answers show it: its origin relative to its data root."""
        return EntryOut(**{**entry.to_json(), "origin": relative_to_roots(entry.origin, self.settings.roots)})
