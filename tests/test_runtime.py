"""The runtime package: the one checkpoint loader, and the line it draws between the data layer and torch."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from runtime.checkpoint import CheckpointError, load_checkpoint, load_state_dict, save_checkpoint
from runtime.pretrained import load_backbone_file

REPO = Path(__file__).resolve().parents[1]


def _weights() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.arange(6.0).reshape(2, 3, 1, 1), "conv.bias": torch.zeros(2)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {"state": {}}},
    lambda sd: {"model_state_dict": sd},
    lambda sd: {"module": sd},
    lambda sd: {"state_dict": {"model": sd}},
], ids=["bare", "state_dict", "model", "model_state_dict", "module", "nested"])
def test_wrapper_keys_are_unwrapped(tmp_path: Path, wrap: Callable[[dict], dict]) -> None:
    path = save_checkpoint(tmp_path / "w.pth", wrap(_weights()))
    assert _same(load_state_dict(path), _weights())


def test_ddp_module_prefix_is_stripped(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ddp.pth", {"model": {f"module.{k}": v for k, v in _weights().items()}})
    assert _same(load_state_dict(path), _weights())


def test_a_text_file_is_an_error_naming_it(tmp_path: Path) -> None:
    text = tmp_path / "weights.pth"
    text.write_text("these are not weights\n")
    for weights_only in (True, False):
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as caught:
            load_checkpoint(text, weights_only=weights_only)
        assert str(text) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match=str(text)):
        load_state_dict(text)


def test_an_empty_or_cut_off_checkpoint_is_an_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(save_checkpoint(tmp_path / "whole.pth", _weights()).read_bytes()[:300])
    with pytest.raises(CheckpointError, match=f"{empty}: an empty file"):
        load_state_dict(empty)
    with pytest.raises(CheckpointError, match=f"{cut}: cannot load this checkpoint"):
        load_state_dict(cut)


def test_a_missing_file_stays_the_os_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_checkpoint(tmp_path / "absent.pth", weights_only=True)


def test_weights_only_is_the_callers_choice(tmp_path: Path) -> None:
    """A training checkpoint holds more than tensors: loading it weights-only refuses, naming the file."""
    path = save_checkpoint(tmp_path / "last.pt", {"model": _weights(), "rng": {"numpy": np.ones(2)}})
    assert load_checkpoint(path, weights_only=False)["rng"]["numpy"].sum() == 2
    with pytest.raises(CheckpointError, match="a weights-only load refuses .*numpy") as caught:
        load_checkpoint(path, weights_only=True)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "list.pth", [torch.zeros(1)])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_state_dict(path)


def test_map_location_is_honoured(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "w.pth", _weights())
    assert all(t.device.type == "cpu" for t in load_state_dict(path, "cpu").values())
    assert load_state_dict(path, torch.device("meta"))["conv.bias"].is_meta


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.neck = nn.Linear(4, 2)


def test_backbone_file_loads_a_backbone_or_the_whole_model(tmp_path: Path) -> None:
    source = _Net()
    backbone_only = {**source.backbone.state_dict(), "classifier.weight": torch.zeros(10, 4)}
    for saved, whole in (({"state_dict": backbone_only}, False), ({"model": source.state_dict()}, True)):
        path = save_checkpoint(tmp_path / "backbone.pth", saved)
        target = _Net()
        load_backbone_file(target, path, backbone="backbone")
        assert _same(target.backbone.state_dict(), source.backbone.state_dict())
        assert _same(target.neck.state_dict(), source.neck.state_dict()) is whole
    body = nn.Sequential(nn.Conv2d(3, 4, 3))
    load_backbone_file(body, save_checkpoint(tmp_path / "body.pth", {"module": {
        f"module.{k}": v for k, v in source.backbone[:1].state_dict().items()}}))
    assert torch.equal(body[0].weight, source.backbone[0].weight)


def test_backbone_file_that_misses_tensors_is_refused_naming_it(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "half.pth", {"0.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(CheckpointError, match=r"half.pth: 1 tensors of the model not in the file.*0.bias"):
        load_backbone_file(nn.Sequential(nn.Conv2d(3, 4, 3)), path)
    wrong = save_checkpoint(tmp_path / "wrong.pth", {"0.weight": torch.zeros(8, 3, 3, 3), "0.bias": torch.zeros(8)})
    with pytest.raises(CheckpointError, match="wrong.pth: 2 tensors"):
        load_backbone_file(nn.Sequential(nn.Conv2d(3, 4, 3)), wrong)


def test_the_data_layer_imports_no_torch() -> None:
    """``dataset`` and every module under it import without torch (or timm, torchvision): torch is runtime's."""
    code = ("import importlib, json, pkgutil, sys\n"
            "import dataset\n"
            "names = [m.name for m in pkgutil.walk_packages(dataset.__path__, 'dataset.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm'))\n"
            "print(json.dumps({'modules': names, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"dataset.frames", "dataset.synth.generate", "dataset.score.metric"} <= set(found["modules"])
    assert found["heavy"] == [], f"dataset imports {found['heavy'][:5]}"
