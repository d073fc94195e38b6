"""The main job's model reuse: checkpoints are reused (or resumed) only under the config that wrote them."""
from __future__ import annotations

from pathlib import Path

from bbox_sub.config import load_detector_config
from metric_sub.config import load_embedder_config
from pipeline.demo import DETECTOR_SET, EMBEDDER_SET, reusable, trained_with
from runtime.checkpoint import save_checkpoint


def test_a_checkpoint_is_reused_only_under_its_own_config(tmp_path: Path) -> None:
    config = load_detector_config("lite0", DETECTOR_SET)
    path = save_checkpoint(tmp_path / "model_final.pth", {"model": {}, "config": config.model_dump(mode="json")})
    assert trained_with(path, load_detector_config("lite0", DETECTOR_SET))
    assert not trained_with(path, load_detector_config("lite0", ["train.stages.0.iterations=7", *DETECTOR_SET]))
    assert not trained_with(path, load_detector_config("tiny", DETECTOR_SET))
    assert not trained_with(path, load_embedder_config("lite0", EMBEDDER_SET))
    assert not trained_with(tmp_path / "missing.pth", config)


def test_a_checkpoint_without_a_config_is_not_reused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "weights.pth", {"model": {}})
    assert not trained_with(path, load_detector_config("lite0"))


def test_a_folder_of_another_config_is_cleared_and_a_killed_run_of_this_one_kept(tmp_path: Path) -> None:
    mine, other = load_detector_config("lite0", DETECTOR_SET), load_detector_config("tiny", DETECTOR_SET)
    folder = tmp_path / "detector"
    save_checkpoint(folder / "last.pth", {"model": {}, "config": mine.model_dump(mode="json")})
    assert not reusable(folder, "model_final.pth", "last.pth", mine)
    assert (folder / "last.pth").is_file()
    save_checkpoint(folder / "model_final.pth", {"model": {}, "config": mine.model_dump(mode="json")})
    assert reusable(folder, "model_final.pth", "last.pth", mine)
    assert not reusable(folder, "model_final.pth", "last.pth", other)
    assert not folder.exists()
