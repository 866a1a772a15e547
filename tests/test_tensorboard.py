"""--tensorboard: the scalars of metrics.jsonl / loss.jsonl and the preview grids come back from the event files
(read with tensorboard's own EventAccumulator), a resumed run drops the events after its checkpoint, nothing else
in the run changes, and a missing tensorboard package is a one-line error before anything is written."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_prepared
from synthpair.cli.main import main
from synthpair.errors import SynthpairError
from synthpair.segmentation.train import SegmentConfig, segment
from synthpair.training.trainer import train_generator
from test_training_trainer import TINY, _weights

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("tensorboard")


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalar(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_prepared(tmp_path_factory.mktemp("tb") / "data")


def test_generator_scalars_and_previews_match_the_run_log(data, tmp_path):
    cfg = dataclasses.replace(TINY, preview_every=3)
    plain = train_generator(data, tmp_path / "plain", cfg, progress=False)
    run = train_generator(data, tmp_path / "tb", cfg, progress=False, tensorboard=True)
    acc = _events(run / "tensorboard")
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    got = _scalar(acc, "train/loss")
    assert [s for s, _ in got] == [r["step"] for r in logged] == list(range(1, 7))
    assert [v for _, v in got] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert [v for _, v in _scalar(acc, "train/lr")] == pytest.approx([r["lr"] for r in logged], rel=1e-6)
    assert {"train/grad_norm", "train/img_per_s", "train/cpu_s"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Images("preview")] == [3, 6]  # preview_every=3 and the final one
    # logging changes nothing else: same weights, same loss log
    w, ref = _weights(run), _weights(plain)
    assert all(torch.equal(w[k], ref[k]) for k in ref)
    assert [r["loss"] for r in logged] == [json.loads(ln)["loss"] for ln in
                                           (plain / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_drops_the_events_after_its_checkpoint(data, tmp_path, monkeypatch):
    from synthpair.training import trainer as trainer_mod

    cfg = dataclasses.replace(TINY, checkpoint_every=2)
    real = trainer_mod.ema_update
    calls = {"n": 0}

    def stop_in_step_4(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == 4:
            raise RuntimeError("crash after step 4's update, before its checkpoint")  # last checkpoint: step 2
        return out

    monkeypatch.setattr(trainer_mod, "ema_update", stop_in_step_4)
    with pytest.raises(RuntimeError):
        train_generator(data, tmp_path / "r", cfg, progress=False, tensorboard=True)
    monkeypatch.setattr(trainer_mod, "ema_update", real)
    train_generator(data, tmp_path / "r", cfg, resume=True, progress=False, tensorboard=True)
    steps = [s for s, _ in _scalar(_events(tmp_path / "r" / "tensorboard"), "train/loss")]
    assert steps == [1, 2, 3, 4, 5, 6]  # the crashed attempt's step-3 event was purged, not duplicated


def test_segment_loss_curve_and_test_summary(data, tmp_path):
    res = segment(data, tmp_path / "seg", SegmentConfig(steps=5, batch_size=4, folds=(0,)), progress=False,
                  tensorboard=True)
    acc = _events(tmp_path / "seg" / "fold_0" / "tensorboard")
    losses = [json.loads(ln) for ln in (tmp_path / "seg" / "fold_0" / "loss.jsonl").read_text().splitlines()]
    assert _scalar(acc, "segment/loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in losses]
    assert _scalar(acc, "test/dice") == [(5, pytest.approx(res["folds"][0]["summary"]["dice"]["mean"], rel=1e-6))]


def test_missing_tensorboard_is_refused_before_writing(data, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(SynthpairError, match="pip install 'synthpair\\[tensorboard\\]'"):
        train_generator(data, tmp_path / "run", TINY, progress=False, tensorboard=True)
    assert not (tmp_path / "run").exists()
    assert main(["segment", str(data), "--out", str(tmp_path / "seg"), "--steps", "2", "--tensorboard"]) == 2
    assert "tensorboard" in capsys.readouterr().err and not (tmp_path / "seg").exists()
