"""A model set: the detector and the embedder ensemble that ``run.sh``, the service and the container images run.

A model set is a small YAML file (``models.yaml``)::

    detector: {config: detector.yaml, weights: detector/model_final.pth}
    embedders:
      - {config: lite0, weights: null}      # null: a Lite config's ImageNet weights
    match: null                             # the matcher's config; null: the bundled one

Paths are relative to the file's folder, so a folder holding ``models.yaml`` and its checkpoints can be moved
or mounted into a container (``/models``) as it is. ``python -m pipeline.demo`` writes one beside the models it
trains (``runs/demo/models.yaml``): that is the bundled default, used wherever no models are named.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from dataset.config import StrictModel
from dataset.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_SET = REPO / "runs" / "demo" / "models.yaml"
"""Where the main job (``python -m pipeline.demo``, default ``--out runs/demo``) writes its model set."""
MAKE_DEFAULT = "python -m pipeline.demo --out runs/demo"


class ModelRef(StrictModel):
    """A model config (a bundled name or a YAML path) and its checkpoint (``None``: a Lite config's ImageNet
    weights; detectors always need one)."""

    config: str
    weights: Path | None = None


class ModelSet(StrictModel):
    """The models of one matcher, with paths resolved against the file they were read from."""

    detector: ModelRef
    embedders: list[ModelRef] = Field(min_length=1)
    match: Path | None = None

    @model_validator(mode="after")
    def _detector_weights(self) -> ModelSet:
        if self.detector.weights is None:
            raise ValueError("detector.weights is required (a trained detector checkpoint)")
        return self

    def resolved(self, folder: Path) -> ModelSet:
        """Relative weights, config files and match config taken from ``folder``; bundled names stay names."""
        def config(name: str) -> str:
            path = folder / name
            return str(path) if name.endswith((".yaml", ".yml", ".json")) and path.is_file() else name

        def ref(model: ModelRef) -> ModelRef:
            weights = None if model.weights is None else folder / model.weights
            return ModelRef(config=config(model.config), weights=weights)

        return ModelSet(detector=ref(self.detector), embedders=[ref(e) for e in self.embedders],
                        match=None if self.match is None else folder / self.match)


def load_model_set(path: Path | str | None = None) -> ModelSet:
    """The model set in ``path`` (default: the bundled one), or a ``DataError`` in one line that says which
    command makes the bundled one."""
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_MODEL_SET
    if not path.is_file():
        if explicit:
            raise DataError(path, "model set not found")
        raise DataError(path, f"no models given and the bundled default is not there yet: `{MAKE_DEFAULT}` trains "
                              "and writes it, or name models (--detector CFG WEIGHTS --embedders CFG WEIGHTS)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        models = ModelSet.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        where = ".".join(str(p) for p in first["loc"]) + ": " + first["msg"] if first else str(exc).splitlines()[0]
        raise DataError(path, f"not a model set ({where})") from None
    return models.resolved(path.parent)


def write_model_set(path: Path | str, models: ModelSet) -> Path:
    """Write ``models`` with every path made relative to the file's folder where it lies inside it."""
    path = Path(path)
    folder = path.parent.resolve()

    def rel(value: Path | str) -> str:
        resolved = Path(value).resolve()
        return str(resolved.relative_to(folder)) if resolved.is_relative_to(folder) else str(value)

    def ref(model: ModelRef) -> dict:
        config = rel(model.config) if Path(model.config).is_file() else model.config
        return {"config": config, "weights": None if model.weights is None else rel(model.weights)}

    document = {"detector": ref(models.detector), "embedders": [ref(e) for e in models.embedders],
                "match": None if models.match is None else rel(models.match)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
