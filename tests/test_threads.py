"""CPU threads under load: ``auto`` (the CLI default) takes the cores other processes leave free, and the training
loops re-choose it every ``REBALANCE_SECONDS`` — a run gives way when a second job starts and takes the cores back
when it ends (issue 12, item 3; speed in bench/threads.py). A fixed count never changes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import synthpair.env as env
from conftest import write_tiny_prepared


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
    env.configure_threads(n)  # back to a fixed count (no auto state left behind)


def test_rebalance_follows_the_free_cores_at_most_every_interval(monkeypatch, restore_threads):
    free = iter([2, 1, 1, 2])  # at configure, then at each read
    monkeypatch.setattr(env, "free_cores", lambda **kw: next(free))
    assert env.configure_threads("auto") == 2 and torch.get_num_threads() == 2
    t0, dt = env._auto_checked_at, env.REBALANCE_SECONDS
    assert env.rebalance_threads(now=t0 + dt / 2) is None  # too early: the load is not even read
    assert env.rebalance_threads(now=t0 + dt) == (2, 1) and torch.get_num_threads() == 1
    assert env.rebalance_threads(now=t0 + 1.5 * dt) is None  # too early again (the clock restarted at t0 + dt)
    assert env.rebalance_threads(now=t0 + 2 * dt) is None  # still 1 free: unchanged
    assert env.rebalance_threads(now=t0 + 3 * dt) == (1, 2) and torch.get_num_threads() == 2


def test_a_fixed_count_is_never_rebalanced(monkeypatch, restore_threads):
    monkeypatch.setattr(env, "free_cores", lambda **kw: pytest.fail("a fixed count must not read the load"))
    assert env.configure_threads(1) == 1
    assert env.rebalance_threads(now=1e9) is None and torch.get_num_threads() == 1
    monkeypatch.setenv("SYNTHPAIR_THREADS", "1")
    assert env.configure_threads(None) == 1 and env.rebalance_threads(now=2e9) is None


def test_keep_leaves_the_count_alone(monkeypatch, restore_threads):
    monkeypatch.setattr(env, "free_cores", lambda **kw: pytest.fail("keep must not read the load"))
    torch.set_num_threads(1)
    monkeypatch.setenv("SYNTHPAIR_THREADS", "keep")
    assert env.configure_threads(None) == 1 and env._auto_checked_at is None
    assert env.configure_threads("keep") == 1 and torch.get_num_threads() == 1


def test_the_cli_default_is_auto(tmp_path: Path, monkeypatch, restore_threads):
    from synthpair.cli.main import main

    monkeypatch.delenv("SYNTHPAIR_THREADS", raising=False)
    monkeypatch.setattr(env, "free_cores", lambda **kw: 1)
    torch.set_num_threads(2)
    data = write_tiny_prepared(tmp_path / "d", n=6, folds=2)
    assert main(["budget", str(data), "--out", str(tmp_path / "v"), "--n", "2"]) == 0
    assert torch.get_num_threads() == 1 and env._auto_checked_at is not None


def test_the_trainer_gives_way_and_logs_it(tmp_path: Path, monkeypatch, restore_threads):
    """A generator run under auto threads re-reads the load between steps and says so in its log."""
    from synthpair.config import apply_overrides
    from synthpair.training.trainer import TrainConfig, train_generator

    data = write_tiny_prepared(tmp_path / "d", n=6, folds=2)
    free = iter([2] + [1] * 100)
    monkeypatch.setattr(env, "free_cores", lambda **kw: next(free))
    monkeypatch.setattr(env, "REBALANCE_SECONDS", 0.0)
    env.configure_threads("auto")
    cfg = apply_overrides(TrainConfig(method="image", steps=3, batch_size=2, preview_every=0, preview_n=0,
                                      checkpoint_every=0, amp="off"), ["net.channels=[8,16]", "net.attention_levels=[false,false]", "net.norm_num_groups=8",
                                "net.num_head_channels=8"])
    run = train_generator(data, tmp_path / "run", cfg, progress=False)
    log = (run / "log.txt").read_text()
    assert "step 1: CPU threads 2 -> 1" in log and log.count("CPU threads") == 1
    assert torch.get_num_threads() == 1
