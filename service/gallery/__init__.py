"""The gallery: one interface (``model.Gallery``), two backends.

``local`` (the default, ``gallery.backend: local``) keeps the gallery in the
service's data folder: FAISS segment files and SQLite, one process.
``milvus`` (``gallery.backend: milvus``) keeps it in a Milvus server that
several service replicas share (``service.gallery.milvus`` says how a change
is committed and how a replica learns that its view is stale).
``open_gallery`` opens the configured one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from service.gallery.local import GalleryStore
from service.gallery.model import (KINDS, Entry, Gallery, GalleryError, GalleryReadOnly, GalleryUnavailable, Kind,
                                   Side, Snapshot, SourceBoxes)

if TYPE_CHECKING:
    from service.settings import Settings

LocalGallery = GalleryStore

__all__ = ["KINDS", "Entry", "Gallery", "GalleryError", "GalleryReadOnly", "GalleryStore", "GalleryUnavailable", "Kind",
           "LocalGallery", "Side", "Snapshot", "SourceBoxes", "open_gallery"]


def open_gallery(settings: Settings, dim: int, models: dict, device: str = "cpu", fresh: bool = False) -> Gallery:
    """The gallery ``settings.gallery`` names; ``fresh`` ignores what is stored, for a rebuild's ``replace_all``."""
    if settings.gallery.backend == "milvus":
        from service.gallery.milvus import MilvusGallery

        return MilvusGallery(settings.gallery, dim=dim, models=models, device=device,
                             scratch_dir=settings.data_dir, fresh=fresh)
    return GalleryStore(settings.data_dir, dim, models, device, fresh=fresh)
