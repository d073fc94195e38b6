"""Training, exact resume and embedding of the tiny embedder on a generated synthetic dataset."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.layout import load_dataset
from metric_sub.config import load_embedder_config
from metric_sub.data import ground_truth_crops
from metric_sub.embed import load_embeddings, load_runner
from metric_sub.train import Trainer
from runtime.checkpoint import load_checkpoint

TINY = ["data.bucket_scale=0.2", "train.batch_size=8", "data.augment=false"]


def _generate(folder: Path, first_id: int, seed: int) -> Path:
    synth = pytest.importorskip("dataset.synth")
    if not hasattr(synth, "generate"):
        pytest.skip("dataset.synth.generate is not available yet")
    from dataset.synth.config import SynthConfig

    config = SynthConfig(items=5, seed=seed, first_id=first_id, shop_size=128, shop_images_min=2,
                         shop_images_max=3, clip_frames=161, clip_width=128, clip_height=224,
                         uncatalogued_share=0.0, absent_start_share=0.0, clutter=1)
    synth.generate(folder, config, workers=1, contact_sheet=False)
    return folder


@pytest.fixture(scope="module")
def synth_roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A train split and a disjoint test split (other items and ids)."""
    base = tmp_path_factory.mktemp("metric_synth")
    return _generate(base / "train", 1, 11), _generate(base / "test", 101, 12)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, weights_only=False)["model"]


def test_ground_truth_crops_follow_the_seed_rules(synth_roots: tuple[Path, Path]) -> None:
    data = load_dataset(synth_roots[0])
    refs = ground_truth_crops(data, min_frame=80)
    assert refs and all(r.instance_id != 0 for r in refs)
    assert {r.kind for r in refs} == {"image", "video"}
    assert all(r.frame >= 80 for r in refs if r.kind == "video")
    assert len(ground_truth_crops(data, min_frame=0)) > len(refs)


def test_arcface_loss_falls_and_best_checkpoint_is_kept(synth_roots: tuple[Path, Path], tmp_path: Path) -> None:
    config = load_embedder_config("tiny", [*TINY, "train.epochs=3"])
    trainer = Trainer(config, [synth_roots[0]], tmp_path, [synth_roots[1]], progress=False)
    best = trainer.run()
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert {"recall@1", "recall@5", "match_acc"} <= set(history[0])
    assert best == max(history, key=lambda r: r["recall@1"])
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    assert load_checkpoint(tmp_path / "best.pt", weights_only=False)["epoch"] == best["epoch"] + 1


def test_resume_continues_exactly(synth_roots: tuple[Path, Path], tmp_path: Path) -> None:
    config = load_embedder_config("tiny", [*TINY, "train.epochs=2", "data.augment=true"])
    straight = Trainer(config, [synth_roots[0]], tmp_path / "straight", progress=False)
    straight.run()
    interrupted = Trainer(config, [synth_roots[0]], tmp_path / "resumed", progress=False)
    stop = straight.epoch_batches[0] // 2 + 1
    interrupted.run(stop_after=stop)
    assert interrupted.step == stop
    resumed = Trainer(config, [synth_roots[0]], tmp_path / "resumed", progress=False)
    resumed.run()
    assert resumed.step == straight.step == straight.total_steps
    a, b = _state(tmp_path / "straight" / "last.pt"), _state(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_encoded_sources_are_unit_norm_deterministic_and_resumable(synth_roots: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    """The annotated boxes through the per-source path, a two-model ensemble, stored per source."""
    from pipeline.encode import encode_sources, gather, write_outputs
    from pipeline.source import SourceEncoder, annotated_sources
    from pipeline.store import SourceStore

    config = load_embedder_config("tiny", TINY)
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    from metric_sub.model import build_embedder

    torch.save({"model": build_embedder(config).state_dict()}, checkpoint)
    runner = load_runner(config, checkpoint, torch.device("cpu"))
    encoder = SourceEncoder(runners=[runner, runner])
    sources = annotated_sources(load_dataset(synth_roots[1]))
    boxes = sum(len(s.given) for s in sources)

    def encode(folder: Path, group_size: int) -> tuple[np.ndarray, dict, list[Path]]:
        store = SourceStore(folder / "sources", {"models": "tiny x2"})
        keys = [store.key(s) for s in sources]
        todo = [(s, k) for s, k in zip(sources, keys) if not store.has(k)]
        report = encode_sources(encoder, todo, store, group_size=group_size, progress=False)
        write_outputs(folder, gather(sources, keys, store, report.failures), detector=None,
                      embedders=[(config, checkpoint)] * 2, resumed={})
        return *load_embeddings(folder / "embed"), [store.path(k) for k in keys]

    embeddings, meta, files = encode(tmp_path / "a", 4)
    assert embeddings.shape == (boxes, 2 * config.model.embedding_size) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    block = embeddings[:, :config.model.embedding_size]
    assert np.allclose(block / np.linalg.norm(block, axis=1, keepdims=True) * np.sqrt(0.5), block, atol=1e-5)
    assert [m["offset"] for m in meta["models"]] == [0, config.model.embedding_size]
    row = meta["rows"][0]
    assert {"kind", "file", "frame", "box", "score", "group", "instance_id"} <= set(row)
    assert ("item_id" in row) == (row["kind"] == "image")

    stamps = [p.stat().st_mtime_ns for p in files]
    assert np.array_equal(encode(tmp_path / "a", 4)[0], embeddings)
    assert [p.stat().st_mtime_ns for p in files] == stamps  # every source was found stored: nothing recomputed
    assert np.array_equal(encode(tmp_path / "b", 4)[0], embeddings)
    assert np.allclose(encode(tmp_path / "c", 1)[0], embeddings, atol=1e-5)  # other batches, same rows


def test_a_checkpoint_of_another_network_names_the_setting_that_differs(tmp_path: Path) -> None:
    from metric_sub.model import build_embedder

    trained = load_embedder_config("tiny", [*TINY, "model.embedding_size=32"])
    checkpoint = tmp_path / "other.pt"
    torch.save({"model": build_embedder(trained).state_dict(), "config": trained.model_dump(mode="json")},
               checkpoint)
    with pytest.raises(ValueError, match=r"other.pt.*model.embedding_size=32 \(config: 64\)"):
        load_runner(load_embedder_config("tiny", TINY), checkpoint, torch.device("cpu"))
    torch.save({"model": build_embedder(trained).state_dict()}, checkpoint)  # no config stored
    with pytest.raises(ValueError, match=r"other.pt.*size mismatch for neck.weight"):
        load_runner(load_embedder_config("tiny", TINY), checkpoint, torch.device("cpu"))
