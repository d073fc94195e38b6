"""The matcher above both stages: the one per-source path (read, detect, crop, embed), the batch run with its
stage cache and report, and the demo."""
from pipeline.run import DEFAULT_EMBEDDERS, STAGES, PipelineResult, format_summary, run_pipeline
from pipeline.source import EncodedSource, Source, SourceEncoder, read_source

__all__ = ["DEFAULT_EMBEDDERS", "STAGES", "EncodedSource", "PipelineResult", "Source", "SourceEncoder",
           "format_summary", "read_source", "run_pipeline"]
