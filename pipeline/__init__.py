"""The matcher above both stages: the one per-source path (read, detect, crop, embed), the batch run with its
stage cache and report, the model set, and the demo."""
from dataset.exports import lazy_exports

_EXPORTS = {
    "Source": "source", "SourceEncoder": "source", "EncodedSource": "source", "read_source": "source",
    "ModelRef": "model_set", "ModelSet": "model_set", "load_model_set": "model_set", "write_model_set": "model_set",
    "STAGES": "run", "PipelineResult": "run", "format_summary": "run", "run_pipeline": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
