"""Progress of long loops: the one place pyinterp uses tqdm.

On a terminal every loop gets tqdm's bar. Anywhere else (CI, ``nohup``, a notebook's log, a
file) a bar would write a carriage-return frame per refresh: megabytes of them for a quick
``reproduce all``. There each loop writes a plain line instead, at most every ``EVERY_PERCENT``
of the total or ``EVERY_SECONDS`` (whichever comes first), plus one at the end:

    train: 40% 480/1200 step [12.1 s, 39.7 step/s] loss=3.912 lr=2.87e-03

``PYINTERP_PROGRESS`` chooses: ``auto`` (default: bars on a terminal, else lines), ``bars``,
``lines``, or ``0``/``off`` (nothing).

    from pyinterp._progress import progress
    for batch in progress(batches, total=n, desc="activations", unit="batch"): ...
    bar = progress(total=steps, initial=step, desc="train", unit="step")
    bar.update(1); bar.set_postfix(loss="3.91"); bar.write("step 100: eval=..."); bar.close()
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Optional, TextIO

ENV = "PYINTERP_PROGRESS"
EVERY_PERCENT = 10.0
EVERY_SECONDS = 30.0
_MODES = {"auto": ("", "1", "auto", "on", "true", "yes"), "off": ("0", "off", "false", "no", "none"),
          "bars": ("bars", "bar", "tqdm"), "lines": ("lines", "line", "log")}


def mode(stream: Optional[TextIO] = None) -> str:
    """'bars', 'lines' or 'off' for output to ``stream`` (default stderr), from PYINTERP_PROGRESS."""
    value = os.environ.get(ENV, "auto").strip().lower()
    chosen = next((m for m, names in _MODES.items() if value in names), None)
    if chosen is None:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected auto, bars, lines or 0/off")
    if chosen != "auto":
        return chosen
    stream = sys.stderr if stream is None else stream
    try:
        return "bars" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


def enabled() -> bool:
    """False when PYINTERP_PROGRESS turns progress off (callers skip building progress output)."""
    return mode() != "off"


def progress(iterable: Optional[Iterable] = None, total: Optional[float] = None, *, desc: str = "",
             unit: str = "it", initial: float = 0, disable: bool = False, file: Optional[TextIO] = None):
    """A tqdm bar on a terminal, else a :class:`LineProgress`; the same calls work on both
    (iterate, ``update``, ``set_postfix``, ``set_description``, ``write``, ``close``, ``with``)."""
    m = "off" if disable else mode(file)
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if m == "bars":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file,
                    dynamic_ncols=True, mininterval=0.5)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                        disable=m == "off", file=file)


class LineProgress:
    """Progress as whole lines, written at most every EVERY_PERCENT or EVERY_SECONDS."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[float] = None, *,
                 desc: str = "", unit: str = "it", initial: float = 0, disable: bool = False,
                 file: Optional[TextIO] = None, every_percent: float = EVERY_PERCENT,
                 every_seconds: float = EVERY_SECONDS, clock=time.monotonic):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.disable = disable
        self.file = file
        self.every_percent, self.every_seconds, self._clock = every_percent, every_seconds, clock
        self.postfix = ""
        self.start = self._last_time = clock()
        self._last_n = initial
        self._next_pct = self._step_above(self._pct(initial))
        self.closed = False

    # -- tqdm's interface --------------------------------------------------------------------
    def __iter__(self):
        if self.iterable is None:
            raise TypeError("LineProgress built without an iterable is not iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __len__(self):
        return int(self.total or 0)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disable:
            return
        pct, now = self._pct(self.n), self._clock()
        if (pct is not None and pct >= self._next_pct) or now - self._last_time >= self.every_seconds:
            self._emit(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def write(self, s: str) -> None:
        """A message line (always written, like tqdm.write, unless progress is off)."""
        if not self.disable:
            self._out(s)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.n != self._last_n:  # the final count, once
            self._emit(self._clock())

    # -- internals ---------------------------------------------------------------------------
    def _pct(self, n: float) -> Optional[float]:
        return 100.0 * n / self.total if self.total else None

    def _step_above(self, pct: Optional[float]) -> float:
        if pct is None:
            return float("inf")
        return (int(pct // self.every_percent) + 1) * self.every_percent

    def _emit(self, now: float) -> None:
        self._last_time, self._last_n = now, self.n
        pct = self._pct(self.n)
        self._next_pct = self._step_above(pct)
        elapsed = now - self.start
        done = self.n - self.initial
        rate = f", {done / elapsed:.3g} {self.unit}/s" if elapsed > 0 and done > 0 else ""
        count = f"{_num(self.n)}/{_num(self.total)}" if self.total else _num(self.n)
        head = f"{self.desc}: " if self.desc else ""
        share = f"{pct:3.0f}% " if pct is not None else ""
        tail = f" {self.postfix}" if self.postfix else ""
        self._out(f"{head}{share}{count} {self.unit} [{elapsed:.1f} s{rate}]{tail}")

    def _out(self, line: str) -> None:
        f = sys.stderr if self.file is None else self.file
        f.write(line + "\n")
        f.flush()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


__all__ = ["ENV", "LineProgress", "enabled", "mode", "progress"]
