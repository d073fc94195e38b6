"""YAML configs validated into typed pydantic models, overridable from the command line.

Both stages describe a model and its training in one YAML file per model. A
typo in a key or a value of the wrong type must fail at start-up with the
file and the key named, not hours into a run, so every config model forbids
unknown keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dataset.errors import DataError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(DataError):
    """A config file or override that does not validate; names the file and the key."""


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set ``a.b.0.c`` in nested mappings and lists; a numeric key indexes an existing list."""
    keys = dotted.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(source, f"cannot set {dotted!r}: {key!r} is not an index of a "
                                          f"{len(node)}-entry list", dotted)
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(source, f"cannot set {dotted!r}: {keys[depth - 1]!r} is not a section", dotted)
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, source: str) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (``0.1``, ``[1, 2]``, ``true``)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(source, f"override {item!r} is not key=value", item)
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw), source)
    return data


def _format_validation(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return key, f"{first['msg']}{extra}"


def validate_config(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate a dict into ``model``; a ``ConfigError`` names the source and the first bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        key, message = _format_validation(exc)
        raise ConfigError(source, message, key) from None


def load_config(model: type[M], path: Path | str, overrides: list[str] | None = None) -> M:
    """Read a YAML file, apply overrides, validate into ``model``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "top level must be a mapping")
    return validate_config(model, apply_overrides(data, overrides, str(path)), str(path))


class ConfigRegistry(Generic[M]):
    """The bundled configs of one kind (``detector``, ``embedder``) and the one rule that turns a name or a path
    into a config: an existing file is itself; otherwise a bare name, with or without ``.yaml``, is a bundled
    config; anything else fails naming the bundled ones."""

    def __init__(self, *, kind: str, model: type[M], folder: Path, others: tuple[str, ...] = ()) -> None:
        self.kind, self.model, self.folder, self.others = kind, model, folder, others
        """``others``: names of files in ``folder`` that are configs of another kind."""

    def names(self) -> list[str]:
        """The bundled configs, by name."""
        return sorted(p.stem for p in self.folder.glob("*.yaml") if p.stem not in self.others)

    def path(self, name_or_path: str | Path) -> Path:
        path = Path(name_or_path)
        if path.is_file():
            return path
        bundled = self.folder / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if path.parent == Path(".") and bundled.is_file() and bundled.stem not in self.others:
            return bundled
        raise ConfigError(name_or_path, f"no such {self.kind} config: not a file, nor a bundled name "
                                        f"({', '.join(self.names())})")

    def load(self, name_or_path: str | Path, overrides: list[str] | None = None) -> M:
        """A config file or bundled name, read, overridden (``key.sub=value``) and validated."""
        return load_config(self.model, self.path(name_or_path), overrides)
