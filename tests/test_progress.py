"""pyinterp._progress: tqdm bars on a terminal; off a terminal a plain line every few percent or
seconds (never carriage-return frames); PYINTERP_PROGRESS chooses; every loop goes through it."""
import io
import re
from pathlib import Path

import pytest
import torch

from pyinterp import _progress
from pyinterp._progress import LineProgress, progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_lines_off_a_terminal_every_ten_percent(monkeypatch):
    monkeypatch.delenv("PYINTERP_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress(total=5000, desc="train", unit="step", file=out)
    assert isinstance(bar, LineProgress)
    for i in range(5000):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and 10 <= len(lines) <= 11, lines
    assert lines[0].startswith("train:  10% 500/5000 step [") and "loss=0.002" in lines[0]
    assert lines[-1].startswith("train: 100% 5000/5000 step [") and "step/s" in lines[-1]


def test_lines_every_few_seconds_when_the_total_is_unknown():
    now = [0.0]
    out = io.StringIO()
    bar = LineProgress(desc="generate", unit="batch", file=out, clock=lambda: now[0])
    for _ in range(100):  # one update every 3 s: a line every 30 s
        now[0] += 3.0
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("generate: 10 batch [30.0 s")


def test_iteration_resume_write_and_no_duplicate_final_line():
    out = io.StringIO()
    items = list(LineProgress(range(20), total=20, desc="x", initial=0, file=out))
    assert items == list(range(20))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("x: 100% 20/20")  # 10, 20 ... 100 %
    out = io.StringIO()
    bar = LineProgress(total=100, initial=95, desc="resumed", file=out)
    bar.write("step 96: eval=1.0")
    bar.update(5)
    bar.close()
    bar.close()
    msg, final = out.getvalue().splitlines()  # the message, then the final count once
    assert msg == "step 96: eval=1.0" and final.startswith("resumed: 100% 100/100")


def test_bars_on_a_terminal_and_the_environment_variable(monkeypatch):
    from tqdm import tqdm

    monkeypatch.delenv("PYINTERP_PROGRESS", raising=False)
    bar = progress(total=3, file=_Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("PYINTERP_PROGRESS", "lines")
    assert isinstance(progress(total=3, file=_Tty()), LineProgress)
    monkeypatch.setenv("PYINTERP_PROGRESS", "bars")
    bar = progress(total=3, file=io.StringIO())
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("PYINTERP_PROGRESS", "0")
    out = io.StringIO()
    bar = progress(range(3), file=out)
    assert list(bar) == [0, 1, 2] and out.getvalue() == "" and not _progress.enabled()
    monkeypatch.setenv("PYINTERP_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="PYINTERP_PROGRESS='sometimes'"):
        progress(total=3)


def test_model_training_log_off_a_terminal(monkeypatch, capsys):
    from pyinterp.models import TrainConfig, Transformer, TransformerConfig, train

    monkeypatch.delenv("PYINTERP_PROGRESS", raising=False)
    model = Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, d_vocab=50, n_ctx=8))
    rows = torch.randint(0, 50, (64, 8))
    train(model, rows, TrainConfig(max_steps=300, batch_size=4, lr=1e-3, progress=True))
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal
    lines = [l for l in err.splitlines() if l.startswith("train:")]
    assert "\r" not in err and 10 <= len(lines) <= 11 and "loss=" in lines[-1], err


def test_every_progress_bar_goes_through_the_helper():
    root = Path(_progress.__file__).parent
    users = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
             if p.name != "_progress.py" and re.search(r"^\s*(from|import) tqdm", p.read_text(), re.M)]
    assert users == []
