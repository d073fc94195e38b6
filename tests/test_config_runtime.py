from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest
import torch

from dataset.config import ConfigError, StrictModel, load_config
from runtime.allocator import keep_freed_memory
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.device import pick_device
from runtime.schedule import lr_factor


class Solver(StrictModel):
    lr: float = 0.01
    steps: int = 10


class Config(StrictModel):
    name: str
    solver: Solver = Solver()
    stages: tuple[Solver, ...] = ()


def test_config_loads_validates_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: tiny\nsolver:\n  lr: 0.1\n")
    cfg = load_config(Config, path, ["solver.steps=7"])
    assert cfg.solver == Solver(lr=0.1, steps=7)
    with pytest.raises(ConfigError, match=r"c.yaml \[solver.stpes\]"):
        load_config(Config, path, ["solver.stpes=7"])
    with pytest.raises(ConfigError, match=r"\[solver.lr\]"):
        load_config(Config, path, ["solver.lr=fast"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(Config, path, ["solver.lr"])
    staged = load_config(Config, path, ["stages=[{lr: 1}, {lr: 2}]", "stages.1.steps=3"])
    assert staged.stages == (Solver(lr=1), Solver(lr=2, steps=3))
    with pytest.raises(ConfigError, match="not an index"):
        load_config(Config, path, ["stages=[{lr: 1}]", "stages.4.lr=3"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Config, path, ["name.x=3"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Config, tmp_path / "missing.yaml")


def test_lr_schedules() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(0.001)
    assert lr_factor(10, 100, 10) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(0.1 * torch.pi)).item()))
    assert lr_factor(100, 100, 0) == pytest.approx(0.0)
    assert lr_factor(50, 100, 0, "step", milestones=(30, 60), gamma=0.4) == pytest.approx(0.4)
    assert lr_factor(5, 100, 0, "constant") == 1.0
    with pytest.raises(ValueError):
        lr_factor(5, 100, 0, "linear")


def test_checkpoint_round_trip_and_device(tmp_path: Path) -> None:
    state = {"w": torch.arange(4.0), "step": 3}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ck" / "last.pt", state), weights_only=False)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], state["w"])
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="expected auto, cpu or cuda"):
        pick_device("gpu0")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_tensor_memory_stays_in_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``keep_freed_memory`` a freed 64 MB tensor is free heap memory, not unmapped; opting out is honoured."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc 2.33+")
    mallinfo2.restype = _MallInfo2
    monkeypatch.setenv("SHOPMATCH_MALLOC", "system")
    assert not keep_freed_memory()
    monkeypatch.delenv("SHOPMATCH_MALLOC")
    assert keep_freed_memory()
    size = 64 << 20
    tensor = torch.ones(size // 4)
    assert mallinfo2().hblkhd < size  # not a mapping of its own
    del tensor
    assert mallinfo2().fordblks >= size


def test_both_stages_resolve_config_names_by_one_rule(tmp_path: Path) -> None:
    """A file is itself; a bare name, with or without .yaml, is bundled; anything else names the bundled ones."""
    from bbox_sub.config import DETECTOR_CONFIGS
    from dataset.config import ConfigError
    from metric_sub.config import EMBEDDER_CONFIGS

    for registry, name in ((DETECTOR_CONFIGS, "tiny"), (EMBEDDER_CONFIGS, "lite0")):
        assert registry.path(name) == registry.path(f"{name}.yaml") == registry.folder / f"{name}.yaml"
        own = tmp_path / f"{name}.yaml"
        own.write_text(registry.path(name).read_text())
        assert registry.path(own) == own and registry.load(own) == registry.load(name)
        with pytest.raises(ConfigError, match=f"no such {registry.kind} config.*{name}"):
            registry.path(tmp_path / "elsewhere" / f"{name}.yaml")
        with pytest.raises(ConfigError, match=f"no such {registry.kind} config"):
            registry.path("nonexistent")
    assert "match" not in EMBEDDER_CONFIGS.names()  # the matcher's config lives beside them, not among them
    with pytest.raises(ConfigError):
        EMBEDDER_CONFIGS.path("match")
