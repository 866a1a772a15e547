"""Config (frozen dataclasses ↔ JSON, --set overrides) and safe file output."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from synthpair.config import apply_overrides, from_dict, load_config, save_config, to_dict
from synthpair.errors import SynthpairError
from synthpair.io import atomic_output_dir, translate_os_errors, write_json_atomic


@dataclass(frozen=True)
class Inner:
    channels: tuple[int, ...] = (8, 16)
    kind: Literal["linear", "cosine"] = "cosine"


@dataclass(frozen=True)
class Outer:
    steps: int = 10
    lr: float = 1e-3
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_round_trip_json(tmp_path: Path) -> None:
    cfg = Outer(steps=3, inner=Inner(channels=(4, 4, 8), kind="linear"))
    save_config(cfg, tmp_path / "c.json")
    assert load_config(Outer, tmp_path / "c.json") == cfg


def test_overrides_are_typed_and_nested() -> None:
    cfg = apply_overrides(Outer(), ["steps=7", "lr=0.5", "inner.kind=linear", "inner.channels=[1,2,3]", "flag=true"])
    assert cfg == Outer(steps=7, lr=0.5, flag=True, inner=Inner(channels=(1, 2, 3), kind="linear"))
    # ints are accepted for floats, the result is a float
    assert isinstance(apply_overrides(Outer(), ["lr=1"]).lr, float)


@pytest.mark.parametrize("override, fragment", [
    ("stepz=3", "unknown key 'stepz'"),
    ("inner.depth=3", "unknown key 'inner.depth'"),
    ("steps=abc", "expected an integer"),
    ("inner.kind=quadratic", "is not one of"),
    ("flag=3", "expected true/false"),
    ("steps", "expected key=value"),
])
def test_bad_overrides_are_one_line_errors(override: str, fragment: str) -> None:
    with pytest.raises(SynthpairError) as err:
        apply_overrides(Outer(), [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(SynthpairError, match="unknown key"):
        from_dict(Outer, {"steps": 1, "bogus": 2})
    assert to_dict(from_dict(Outer, {"steps": 1}))["steps"] == 1


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "full.txt").write_text("x")
    assert (out / "full.txt").read_text() == "x"
    with pytest.raises(SynthpairError, match="already exists"):
        with atomic_output_dir(out):
            pass


def test_disk_full_and_permission_errors_are_one_line(tmp_path: Path) -> None:
    for code, words in ((errno.ENOSPC, "disk full"), (errno.EACCES, "permission denied")):
        with pytest.raises(SynthpairError, match=words):
            with translate_os_errors(tmp_path / "x"):
                raise OSError(code, os.strerror(code), str(tmp_path / "x"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_write_to_full_device_is_reported(tmp_path: Path) -> None:
    # /dev/full answers every write with ENOSPC: the write goes through the same atomic path
    link = tmp_path / "full"
    link.symlink_to("/dev/full")
    with pytest.raises(SynthpairError, match="disk full"):
        with translate_os_errors(link):
            with open(link, "wb") as fh:
                fh.write(b"x" * 10)
                fh.flush()


def test_write_json_atomic_no_temp_left(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    # readable by others like any normally created file (mkstemp alone would leave 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
