"""Stage 1, the garment detector: a Faster R-CNN with a timm backbone (VoVNet, EfficientNet) and an FPN,
its configs, training (one process or torchrun) and batched inference."""
from dataset.exports import lazy_exports

_EXPORTS = {
    "DetectorConfig": "config",
    "InferConfig": "config",
    "DETECTOR_CONFIGS": "config",
    "load_detector_config": "config",
    "Detector": "model",
    "build_detector": "model",
    "load_detector": "model",
    "BatchDetector": "detect",
    "Detections": "detect",
    "Trainer": "train",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
