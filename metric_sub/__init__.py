"""Stage 2, the crop embedder and the matcher: EfficientNet + GeM + ArcFace embedders, their configs and
training (one process or torchrun), the ensemble, the gallery index and the voting rules."""
from dataset.exports import lazy_exports

_EXPORTS = {
    "EmbedderConfig": "config",
    "EMBEDDER_CONFIGS": "config",
    "load_embedder_config": "config",
    "Embedder": "model",
    "build_embedder": "model",
    "ModelRunner": "embed",
    "load_runner": "embed",
    "embed_crops": "embed",
    "load_embeddings": "embed",
    "MatchConfig": "match",
    "load_match_config": "match",
    "match_embeddings": "match",
    "GalleryIndex": "index",
    "VoteRules": "vote",
    "Trainer": "train",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
