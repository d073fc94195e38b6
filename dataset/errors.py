"""Errors that name the file and the problem, and a collector for batch readers.

A batch run must never die on one bad file: readers raise ``DataError`` for a
single file and batch readers record it in an ``IssueLog`` and go on, so the
caller can report every skipped file at the end.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class DataError(Exception):
    """A problem with one input file; the message names the file and the field or cause."""

    def __init__(self, path: Path | str, problem: str, field: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.field = field
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: {problem}")


class AnnotationError(DataError):
    """A malformed annotation file."""


class VideoError(DataError):
    """A clip that cannot be opened or decoded."""


class ImageError(DataError):
    """An image that cannot be read."""


@dataclass
class Issue:
    """One skipped input or one dropped part of an input, for the end-of-run report."""

    path: str
    problem: str
    severity: str = "error"  # "error": the input was skipped; "warning": part of it was dropped

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.problem}"


@dataclass
class IssueLog:
    """Collects errors and warnings during a batch read instead of raising."""

    issues: list[Issue] = field(default_factory=list)

    def error(self, exc: DataError | Exception, path: Path | str | None = None) -> None:
        where = str(getattr(exc, "path", path) or path or "?")
        problem = exc.problem if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, DataError) and exc.field:
            problem = f"[{exc.field}] {problem}"
        self.issues.append(Issue(where, problem, "error"))
        log.error("skipped %s: %s", where, problem)

    def warning(self, path: Path | str, problem: str) -> None:
        self.issues.append(Issue(str(path), problem, "warning"))
        log.warning("%s: %s", path, problem)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def extend(self, other: "IssueLog") -> None:
        self.issues.extend(other.issues)
