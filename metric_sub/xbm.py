"""The cross-batch memory (XBM) of several ranks: one memory of the global stream, the same on every rank.

Each rank adds the embeddings of every rank's part of the batch (gathered, in rank order) to its memory, so
the memory holds the last ``xbm`` embeddings of the global batches, exactly as one process training on the
whole batch would. Each rank's loss weighs its own rows and the memory rows so that the ranks' mean, which
DistributedDataParallel's gradient averaging takes, is the one-process loss over [global batch; memory].
"""
from __future__ import annotations

import torch

from metric_sub.model import ArcFaceHead, ArcFaceMemory
from runtime.distributed import gather_rows


class GatheredArcFaceMemory(ArcFaceMemory):
    """``ArcFaceMemory`` fed with all ranks' embeddings; same state dict, so checkpoints move between the two."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        everyone = gather_rows(embeddings)
        everyone_labels = gather_rows(labels)
        self.embedding_memory = self.embedding_memory.to(embeddings.device, embeddings.dtype)
        self.label_memory = self.label_memory.to(labels.device)
        self.add_to_memory(everyone, everyone_labels, len(everyone))
        filled = self.memory_size if self.has_been_filled else self.queue_idx
        batch = len(everyone)
        own = self.loss(embeddings, labels)
        remembered = self.loss(self.embedding_memory[:filled], self.label_memory[:filled])
        return (batch * own + filled * remembered) / (batch + filled)


def gather_memory(head: ArcFaceHead) -> None:
    """Give ``head`` a memory of all ranks' embeddings, keeping its ArcFace layer and queue."""
    if head.memory is None or isinstance(head.memory, GatheredArcFaceMemory):
        return
    old = head.memory
    head.memory = GatheredArcFaceMemory(head.arcface, old.embedding_size, memory_size=old.memory_size)
    head.memory.load_state_dict(old.state_dict())
