"""The matcher above both stages: the one per-source path (read, detect, crop, embed), the batch run with its
stage cache and report, and the demo."""
from pipeline.model_set import ModelRef, ModelSet, load_model_set, write_model_set
from pipeline.run import STAGES, PipelineResult, format_summary, run_pipeline
from pipeline.source import EncodedSource, Source, SourceEncoder, read_source

__all__ = ["STAGES", "EncodedSource", "ModelRef", "ModelSet", "PipelineResult", "Source", "SourceEncoder",
           "format_summary", "load_model_set", "read_source", "run_pipeline", "write_model_set"]
