"""The contest scorer: result.json validation, the three-level F1 metric and a ground-truth oracle.

See ``dataset.score.metric`` for the metric and the decisions taken where the
participants' evaluator and the official text disagree, and
``dataset.score.result_file`` for the schema rules.
"""
from dataset.score.metric import ClipOutcome, LevelStats, ScoreReport, score
from dataset.score.oracle import oracle_result
from dataset.score.result_file import (ClipPrediction, ResultEntry, ResultError, load_result, validate_result,
                                       write_result)

__all__ = ["ClipOutcome", "ClipPrediction", "LevelStats", "ResultEntry", "ResultError", "ScoreReport",
           "load_result", "oracle_result", "score", "validate_result", "write_result"]
