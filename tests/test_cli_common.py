"""The CLI's progress output: a bar on a terminal, a few plain lines in a log."""

import io
import sys

from napari_shift_equivariance.cli._common import Progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _feed(monkeypatch, tty, total=500, clock=None):
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    if clock is not None:
        monkeypatch.setattr("napari_shift_equivariance.cli._common.time.monotonic", clock)
    with Progress("predict (correct)") as bar:
        for done in range(total + 1):
            bar(done, total)
    return stream.getvalue()


def test_log_gets_a_few_plain_lines(monkeypatch):
    text = _feed(monkeypatch, tty=False)
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 11  # 0 %, 10 %, ..., 100 %
    assert lines[0].startswith("predict (correct):   0% (0/500)")
    assert lines[5].startswith("predict (correct):  50% (250/500)")
    assert lines[-1].startswith("predict (correct): 100% (500/500)")


def test_log_lines_for_slow_runs_and_new_totals(monkeypatch):
    t = iter(range(0, 100_000, 7))  # 7 s per update, 70 s per 10 %: a line every ~60 s too
    lines = _feed(monkeypatch, tty=False, total=100, clock=lambda: float(next(t))).splitlines()
    seconds = [float(ln.split()[-2]) for ln in lines]
    assert max(b - a for a, b in zip(seconds, seconds[1:])) <= 63
    assert 11 < len(lines) <= 22
    stream = _Stream(False)
    monkeypatch.setattr(sys, "stderr", stream)
    bar = Progress("cluster")
    for total in (4, 8):  # a second phase with its own total starts again at 0 %
        for done in range(total + 1):
            bar(done, total)
        bar(total, total)  # repeated end: printed once
    lines = stream.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [
        "cluster:   0%", "cluster:  25%", "cluster:  50%", "cluster:  75%", "cluster: 100%",
        "cluster:   0%", "cluster:  12%", "cluster:  25%", "cluster:  38%", "cluster:  50%",
        "cluster:  62%", "cluster:  75%", "cluster:  88%", "cluster: 100%"]


def test_terminal_gets_a_bar_and_quiet_nothing(monkeypatch):
    text = _feed(monkeypatch, tty=True, total=50)
    assert "\r" in text and "predict (correct)" in text
    stream = _Stream(False)
    monkeypatch.setattr(sys, "stderr", stream)
    bar = Progress("x", quiet=True)
    bar(1, 2)
    bar.close()
    assert stream.getvalue() == ""
