"""Shared reporting for the paper reproductions: figures, checks, comparisons and HTML pages.

An ``Experiment`` page shows, for one paper: each figure with what it should show and whether
this run shows it (a computed ``Check``), the paper's reported numbers beside ours (marking what
cannot be compared at this scale), the settings that differ from the paper's, and the checks.
Figures are drawn with matplotlib's object API (``new_figure``) on the Agg canvas, so importing
this module never changes the user's pyplot backend.
"""
from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from pyinterp.experiments._io import save_figure, write_text


@dataclass
class Check:
    """A computed statement about this run: ``passed`` is measured, never hard-coded."""

    name: str
    passed: bool
    detail: str

    def as_dict(self):
        return {"name": self.name, "passed": bool(self.passed), "detail": self.detail}


@dataclass
class FigureEntry:
    file: str
    title: str
    expect: str  # what the paper's version of this figure shows
    check: Optional[Check] = None
    headline: bool = False  # the paper's thumbnail on the top page


@dataclass
class Comparison:
    quantity: str
    paper: str
    ours: str
    comparable: bool = True
    note: str = ""
    key: bool = False  # one of the one or two numbers the top page shows

    def as_dict(self):
        return {"quantity": self.quantity, "paper": self.paper, "ours": self.ours,
                "comparable": bool(self.comparable), "note": self.note}


@dataclass
class Setting:
    name: str
    paper: str
    ours: str
    why: str = ""


@dataclass
class Page:
    title: str
    citation: str
    summary: str
    scale: str
    figures: List[FigureEntry] = field(default_factory=list)
    comparisons: List[Comparison] = field(default_factory=list)
    settings: List[Setting] = field(default_factory=list)
    checks: List[Check] = field(default_factory=list)
    sections: List[tuple] = field(default_factory=list)  # (title, raw html)
    footer: str = ""


def page_summary(page: Page) -> dict:
    """What the top page shows of this paper: the headline figure (the one marked ``headline``,
    else the first) and the key numbers (the comparisons marked ``key``, else the first two)."""
    head = next((f for f in page.figures if f.headline), page.figures[0] if page.figures else None)
    key = [c for c in page.comparisons if c.key] or page.comparisons[:2]
    return {"headline_figure": head.file if head else None,
            "headline_title": head.title if head else None,
            "key_numbers": [c.as_dict() for c in key]}


def new_figure(ncols: int = 1, nrows: int = 1, size=(5.0, 4.0), **kw):
    """A (Figure, axes) pair on the Agg canvas; ``size`` is per panel (inches)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    if nrows == 1 and ncols == 1:
        return fig, axes[0, 0]
    if nrows == 1:
        return fig, list(axes[0])
    return fig, axes


def save(fig, path) -> Path:
    """Save ``fig`` to ``path`` (PNG, atomic) and free it."""
    fig.tight_layout()
    p = save_figure(fig, path)
    fig.clear()
    return p


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.cite{color:#555;font-size:.95em} table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top} th{background:#f4f4f4}
.ok{color:#0a7a2f;font-weight:600} .bad{color:#b3261e;font-weight:600} .na{color:#777}
figure{margin:1.2em 0;padding:.8em;border:1px solid #e3e3e3;border-radius:6px;background:#fcfcfc}
figure img{max-width:100%} figcaption{margin-top:.5em}
.ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;white-space:pre-wrap;margin:.15em 0}
.ctx span{border-radius:2px} .small{font-size:.85em;color:#555}
"""


def _esc(s) -> str:
    return html.escape(str(s))


def mark(passed: Optional[bool]) -> str:
    if passed is None:
        return '<span class="na">n/a</span>'
    return '<span class="ok">yes</span>' if passed else '<span class="bad">no</span>'


def render(page: Page) -> str:
    """The page as a standalone HTML document (figures referenced by relative path)."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_esc(page.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(page.title)}</h1>",
        f"<p class='cite'>{page.citation}</p>",
        f"<p>{page.summary}</p>",
        f"<p class='small'>Scale: <b>{_esc(page.scale)}</b>. Checks passed: "
        f"{sum(c.passed for c in page.checks)}/{len(page.checks)}.</p>",
    ]
    if page.figures:
        out.append("<h2>Figures</h2>")
        for f in page.figures:
            verdict = ""
            if f.check is not None:
                verdict = (f"<br><b>Does this run show it?</b> {mark(f.check.passed)} — "
                           f"{_esc(f.check.detail)}")
            out.append(
                f"<figure><img src='{_esc(f.file)}' alt='{_esc(f.title)}'><figcaption>"
                f"<b>{_esc(f.title)}.</b> <i>What it should show:</i> {_esc(f.expect)}{verdict}"
                "</figcaption></figure>"
            )
    if page.comparisons:
        out.append("<h2>The paper's numbers beside ours</h2><table><tr><th>quantity</th>"
                   "<th>paper</th><th>this run</th><th>comparable?</th></tr>")
        for c in page.comparisons:
            comp = "yes" if c.comparable else "no — different scale"
            if c.note:
                comp += f" ({_esc(c.note)})"
            out.append(f"<tr><td>{_esc(c.quantity)}</td><td>{_esc(c.paper)}</td>"
                       f"<td>{_esc(c.ours)}</td><td>{comp}</td></tr>")
        out.append("</table>")
    if page.settings:
        out.append("<h2>Settings that differ from the paper</h2><table><tr><th>setting</th>"
                   "<th>paper</th><th>this run</th><th>why</th></tr>")
        for s in page.settings:
            out.append(f"<tr><td>{_esc(s.name)}</td><td>{_esc(s.paper)}</td><td>{_esc(s.ours)}</td>"
                       f"<td>{_esc(s.why)}</td></tr>")
        out.append("</table>")
    for title, raw in page.sections:
        out.append(f"<h2>{_esc(title)}</h2>{raw}")
    if page.checks:
        out.append("<h2>Checks</h2><table><tr><th>check</th><th>passed</th><th>detail</th></tr>")
        for c in page.checks:
            out.append(f"<tr><td>{_esc(c.name)}</td><td>{mark(c.passed)}</td><td>{_esc(c.detail)}</td></tr>")
        out.append("</table>")
    if page.footer:
        out.append(f"<p class='small'>{page.footer}</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_page(page: Page, path) -> Path:
    return write_text(path, render(page))


def highlight_tokens(tokens: Sequence[str], acts: Sequence[float], vmax: float, focus: int = -1) -> str:
    """One context as HTML: each token's background is orange in proportion to ``acts/vmax``.

    tokens: (L,) strings; acts: (L,) activations; ``focus`` (index) gets an outline.
    """
    parts = []
    vmax = float(vmax) if vmax and vmax > 0 else 1.0
    for i, (t, a) in enumerate(zip(tokens, acts)):
        alpha = max(0.0, min(1.0, float(a) / vmax))
        style = f"background:rgba(255,140,0,{alpha:.2f})"
        if i == focus:
            style += ";outline:1px solid #c00"
        parts.append(f"<span style='{style}' title='{float(a):.3g}'>{_esc(t)}</span>")
    return "<div class='ctx'>" + "".join(parts) + "</div>"


__all__ = ["CSS", "Check", "Comparison", "FigureEntry", "Page", "Setting", "highlight_tokens", "mark",
           "new_figure", "page_summary", "render", "save", "write_page", "asdict"]
