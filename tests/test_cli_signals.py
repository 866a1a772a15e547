"""``kill`` (SIGTERM) ends a synthpair command like Ctrl-C: KeyboardInterrupt inside the command (so the trainer
checkpoints and atomic output folders are removed), exit code 130, and the previous SIGTERM handler back."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

from synthpair.cli import main as cli


def _parser_running(func):
    p = argparse.ArgumentParser()
    p.add_argument("--threads", default=None)
    p.set_defaults(func=func)
    return p


def test_sigterm_inside_a_command_is_an_interrupt(monkeypatch, capsys):
    reached = []

    def command(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at the next bytecode; never reached
            reached.append("after sleep")
        finally:
            reached.append("cleanup ran")
        return 0

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(command))
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main([]) == cli.EXIT_INTERRUPTED
    assert reached == ["cleanup ran"]
    assert signal.getsignal(signal.SIGTERM) is before
    assert "interrupted" in capsys.readouterr().err


def test_an_embedding_programs_sigterm_handler_is_left_alone(monkeypatch):
    seen = []
    mine = lambda signum, frame: seen.append(signum)  # noqa: E731
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        def command(args):
            assert signal.getsignal(signal.SIGTERM) is mine
            os.kill(os.getpid(), signal.SIGTERM)
            return 0

        monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(command))
        assert cli.main([]) == 0
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_killed_segment_leaves_no_half_written_folder(tmp_path):
    """A real process: 'synthpair segment' killed mid-training exits 130 and leaves neither OUT nor a .partial."""
    from synthpair.data.phantoms import write_phantom_source

    src = tmp_path / "src"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    write_phantom_source(src, n=12, size=32, seed=0)
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "synthpair", "prepare", str(src), "--out", str(data), "--size", "32",
                    "--folds", "2"], check=True, capture_output=True, env=env)
    out = tmp_path / "seg"
    proc = subprocess.Popen([sys.executable, "-m", "synthpair", "segment", str(data), "--out", str(out),
                             "--steps", "100000", "--folds", "0"], stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        time.sleep(0.2)
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir()), "segment never started writing"
    time.sleep(1.0)  # inside the training loop
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=240)[1].decode()  # generous: a loaded machine finishes the step and cleans up slowly
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
