"""How the models run: device, precision, allocator, threads, seeding, learning-rate schedule, checkpoints,
inference-time layer fusion and offline ImageNet weights.

Both stages, the service and the benchmarks train and run their networks
through these helpers, so that the detector and the embedder behave the same
on CPU and CUDA, resume the same way and load weights the same way. The data
layer (``dataset``) stays free of torch; this package is where torch runs.
Each submodule is small and imports only what it needs; the names below are
imported from them on first use (``from runtime import pick_device``).

- ``runtime.device``: ``pick_device``, ``torch_threads``
- ``runtime.precision``: ``cpu_has_bf16``, ``onednn_isa_allows_bf16``, ``autocast_dtype``, ``effective_dtype``,
  ``autocast``, ``channels_last_pays``, ``true_fp32``
- ``runtime.allocator``: ``keep_freed_memory``, ``release_freed_memory`` (glibc; no torch)
- ``runtime.seeding``: ``seed_everything``, ``rng_state``, ``set_rng_state``
- ``runtime.schedule``: ``lr_factor``
- ``runtime.checkpoint``: ``save_checkpoint``, ``load_checkpoint`` (every ``torch.load`` of the project),
  ``load_state_dict``, ``CheckpointError``
- ``runtime.fuse``: ``fold_batch_norms``, ``fuse_conv_activations``
- ``runtime.pretrained``: ``load_lite_weights``, ``lite_timm_state_dict``, ``load_backbone_file``
"""
from __future__ import annotations

from dataset.exports import lazy_exports

_EXPORTS = {
    "pick_device": "device", "autocast": "precision", "autocast_dtype": "precision", "cpu_has_bf16": "precision",
    "effective_dtype": "precision", "keep_freed_memory": "allocator", "release_freed_memory": "allocator",
    "seed_everything": "seeding", "lr_factor": "schedule", "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint", "load_state_dict": "checkpoint", "CheckpointError": "checkpoint",
    "fold_batch_norms": "fuse", "fuse_conv_activations": "fuse", "load_backbone_file": "pretrained",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
