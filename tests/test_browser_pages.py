"""tools/check_pages.py, the headless-Chromium check CI runs on every page of a tiny
`reproduce all` (file://, no network): it passes a sound page and fails each kind of broken one
(missing image, broken link, console error, JavaScript exception, blank figure, empty <figure>,
a network request). Needs the Debian `chromium` package (.ci/run installs it)."""
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("check_pages", Path(__file__).parents[1] / "tools" / "check_pages.py")
check_pages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_pages)

if not (os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")):
    if os.environ.get("PYINTERP_REQUIRE_BROWSER") == "1":  # CI: a missing browser is a failure
        raise RuntimeError("PYINTERP_REQUIRE_BROWSER=1 but no chromium is installed")
    pytest.skip("needs headless Chromium (Debian package 'chromium'; .ci/run installs it)", allow_module_level=True)


def _png(path, blank=False):
    from pyinterp.experiments.report import new_figure, save

    fig, ax = new_figure(size=(2, 2))
    if not blank:
        ax.plot([0, 1, 2], [0, 1, 4])
    else:
        ax.set_axis_off()
    save(fig, path)


GOOD = """<!doctype html><html><head><meta charset='utf-8'><title>t</title></head><body>
<h1 id='top'>Run</h1><figure><img src='fig.png' alt='f'><figcaption>a figure</figcaption></figure>
<a href='sub/page.html'>sub</a> <a href='metrics.json'>metrics</a> <a href='#top'>top</a>
<a href='https://example.org/paper'>the paper (external, not followed)</a>{extra}</body></html>"""

BROKEN = {
    "missing image": ("<img src='nope.png'>", "missing or broken image: nope.png"),
    "broken link": ("<a href='sub/missing.html'>x</a>", "broken link: sub/missing.html"),
    "broken anchor": ("<a href='#nowhere'>x</a>", "no #nowhere on the page"),
    "console error": ("<script>console.error('boom')</script>", "console.error: boom"),
    "exception": ("<script>no_such_function()</script>", "JavaScript exception"),
    "blank figure": ("<img src='blank.png'>", "empty figure (every pixel the same colour): blank.png"),
    "empty figure": ("<figure><figcaption>nothing</figcaption></figure>", "<figure> #2 holds no image"),
    "network": ("<img src='https://example.org/x.png'>", "requests a network resource: https://example.org/x.png"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    _png(root / "fig.png")
    _png(root / "blank.png", blank=True)
    (root / "metrics.json").write_text("{}")
    (root / "sub").mkdir()
    (root / "sub" / "page.html").write_text("<!doctype html><title>s</title><p>back to <a href='../index.html'>"
                                            "the run</a></p><img src='../fig.png'>")
    return root


@pytest.fixture(scope="module")
def browser():
    with check_pages.Chromium() as b:
        yield b


def test_sound_pages_pass(site, browser):
    (site / "index.html").write_text(GOOD.format(extra=""))
    res = check_pages.check_page(browser, site / "index.html")
    assert res["problems"] == [] and res["images"] == 1
    assert sorted(p.name for p in res["links"]) == ["index.html", "metrics.json", "page.html"]
    assert res["external"] == ["https://example.org/paper"]
    sub = check_pages.check_page(browser, site / "sub" / "page.html")
    assert sub["problems"] == []


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_kind_of_broken_page_fails(site, browser, kind):
    extra, expected = BROKEN[kind]
    page = site / f"broken_{kind.replace(' ', '_')}.html"
    page.write_text(GOOD.format(extra=extra))
    problems = check_pages.check_page(browser, page)["problems"]
    assert any(expected in p for p in problems), problems


def test_whole_run_folder_and_exit_code(tmp_path, site):
    run = tmp_path / "run"
    shutil.copytree(site, run, ignore=shutil.ignore_patterns("broken_*"))
    (run / "index.html").write_text(GOOD.format(extra=""))
    assert check_pages.main([str(run), "--screenshot", str(tmp_path / "top.png")]) == 0
    assert (tmp_path / "top.png").read_bytes()[:4] == b"\x89PNG"
    (run / "sub" / "page.html").write_text("<!doctype html><title>s</title><p>x</p><img src='../gone.png'>")
    report = check_pages.check_run(run, log=lambda *a: None)
    assert report["index.html"] == [] and any("gone.png" in p for p in report["sub/page.html"])
    assert check_pages.main([str(run)]) == 1
