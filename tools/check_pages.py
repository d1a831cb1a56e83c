#!/usr/bin/env python3
"""Open every HTML page of a run folder in headless Chromium and fail on what a reader would see
broken: a missing image, a broken link, a console error or an empty figure.

    python3 tools/check_pages.py runs/                 # exit 1 and a list of problems if any
    python3 tools/check_pages.py runs/ --screenshot top.png   # also a full-page PNG of index.html

Pages are opened from file:// with the network cut off (every host resolves to nothing), as a
reader opens a copied run folder. Per page it checks:

* no JavaScript exception, console error or failed resource load (Chromium's own log included);
* every <img> loaded (natural size > 0), is displayed (rendered size > 0) and is not blank
  (its pixels are not all one colour); every <figure> holds such an image;
* every link resolves: file:// targets exist (an #anchor exists in the target page), http(s)
  links are listed but not followed; no page requests anything from the network.

Chromium is driven through its DevTools protocol over a pipe (--remote-debugging-pipe: JSON
messages ending in NUL on file descriptors 3 and 4), so this needs only the standard library and
the Debian ``chromium`` package (``CHROMIUM`` names another binary).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import unquote, urlsplit

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         # no network: every host name fails to resolve, so nothing can load from outside
         "--host-resolver-rules=MAP * ~NOTFOUND",
         # let the page read its own file:// images into a canvas (the blank-figure check)
         "--allow-file-access-from-files",
         "--remote-debugging-pipe"]

# Runs in the page after it loaded: what the checks need, as JSON.
_INSPECT = r"""
(() => {
  const imgs = [...document.images].map(im => {
    let blank = null;
    if (im.complete && im.naturalWidth > 0) {
      try {
        const w = Math.min(im.naturalWidth, 256), h = Math.min(im.naturalHeight, 256);
        const c = document.createElement('canvas'); c.width = w; c.height = h;
        const g = c.getContext('2d'); g.drawImage(im, 0, 0, w, h);
        const d = g.getImageData(0, 0, w, h).data; blank = true;
        for (let i = 4; i < d.length; i += 4)
          if (d[i] !== d[0] || d[i+1] !== d[1] || d[i+2] !== d[2] || d[i+3] !== d[3]) { blank = false; break; }
      } catch (e) { blank = null; }
    }
    const r = im.getBoundingClientRect();
    return {src: im.getAttribute('src'), url: im.src, complete: im.complete, nw: im.naturalWidth,
            nh: im.naturalHeight, w: r.width, h: r.height, blank: blank};
  });
  const links = [...document.querySelectorAll('a[href]')].map(a => ({raw: a.getAttribute('href'), url: a.href}));
  const figures = [...document.querySelectorAll('figure')].map(f => f.querySelectorAll('img,svg,canvas').length);
  const ids = [...document.querySelectorAll('[id],a[name]')].map(e => e.id || e.getAttribute('name'));
  return JSON.stringify({title: document.title, imgs, links, figures, ids,
                         text: document.body ? document.body.innerText.length : 0});
})()
"""


class Chromium:
    """A headless Chromium with one page, driven over --remote-debugging-pipe."""

    def __init__(self, binary: Optional[str] = None, timeout: float = 60.0):
        binary = binary or os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            raise FileNotFoundError("no Chromium found: install the Debian package (apt-get install -y chromium) "
                                    "or set CHROMIUM to the browser binary")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="check-pages-profile-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # in the child: its fd 3 reads our commands, fd 4 writes its replies
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: List[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def _send(self, msg: dict) -> None:
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                    raise RuntimeError(f"Chromium exited (code {self.proc.poll()}): {err}")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: Optional[dict] = None, session: bool = False) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == method for e in self.events):
            reply = self._read(deadline)
            if "method" in reply:
                self.events.append(reply)

    def open(self, url: str) -> List[dict]:
        """Load ``url`` and return the events of its loading (console, errors, requests)."""
        self.events = []
        nav = self.call("Page.navigate", {"url": url}, session=True)
        if nav.get("errorText"):
            return [{"method": "Page.navigateFailed", "params": {"errorText": nav["errorText"]}}]
        self.wait_for("Page.loadEventFired")
        # drain what arrives right after the load event (late console messages)
        self.call("Runtime.evaluate", {"expression": "new Promise(r => setTimeout(r, 100))",
                                       "awaitPromise": True}, session=True)
        return list(self.events)

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluation failed: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def screenshot(self, path) -> None:
        """A PNG of the whole page at 1280 px width."""
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": int(height),
                                                         "deviceScaleFactor": 1, "mobile": False}, session=True)
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        Path(path).write_bytes(base64.b64decode(data["data"]))
        self.call("Emulation.clearDeviceMetricsOverride", session=True)

    def close(self) -> None:
        try:
            self._send({"id": self._id + 1, "method": "Browser.close"})
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - it is going away either way
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _file_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def _event_problems(events: List[dict]) -> List[str]:
    out = []
    urls = {e["params"].get("requestId"): e["params"].get("request", {}).get("url")
            for e in events if e["method"] == "Network.requestWillBeSent"}
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"JavaScript exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(f"console.{p['type']}: {args}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"console error ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".rstrip())
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"failed to load {urls.get(p.get('requestId'), 'a resource')}: {p.get('errorText')}")
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:", "about:", "blob:")):
                out.append(f"requests a network resource: {url}")
        elif m == "Page.navigateFailed":
            out.append(f"page did not open: {p.get('errorText')}")
    return out


def check_page(browser: Chromium, path: Path) -> Dict[str, object]:
    """Open one page; returns {'problems': [...], 'links': [file targets], 'external': [urls]}."""
    url = path.resolve().as_uri()
    problems = _event_problems(browser.open(url))
    info = json.loads(browser.evaluate(_INSPECT))
    if info["text"] == 0:
        problems.append("the page shows no text")
    for im in info["imgs"]:
        if not im["complete"] or im["nw"] == 0:
            problems.append(f"missing or broken image: {im['src']}")
        elif im["w"] == 0 or im["h"] == 0:
            problems.append(f"image not displayed (rendered {im['w']}x{im['h']}): {im['src']}")
        elif im["blank"]:
            problems.append(f"empty figure (every pixel the same colour): {im['src']}")
        elif im["blank"] is None:
            problems.append(f"could not read the pixels of image {im['src']} (not a file:// image?)")
    for i, n in enumerate(info["figures"]):
        if n == 0:
            problems.append(f"empty figure: <figure> #{i + 1} holds no image")
    files, external = [], []
    for link in info["links"]:
        parts = urlsplit(link["url"])
        if parts.scheme == "file":
            target = _file_path(link["url"])
            if not target.exists():
                problems.append(f"broken link: {link['raw']} (no file {target})")
                continue
            if parts.fragment and target.resolve() == path.resolve() and parts.fragment not in info["ids"]:
                problems.append(f"broken link: {link['raw']} (no #{parts.fragment} on the page)")
            files.append(target)
        elif parts.scheme in ("http", "https", "mailto"):
            external.append(link["url"])
        else:
            problems.append(f"link of unexpected kind: {link['raw']}")
    return {"problems": problems, "links": files, "external": external, "images": len(info["imgs"])}


def check_run(root, screenshot=None, log=print) -> Dict[str, List[str]]:
    """Check every HTML page under ``root`` (and the pages they link to); {page: problems}."""
    root = Path(root).resolve()
    queue = sorted(root.rglob("*.html"))
    if not queue:
        return {str(root): ["no HTML pages here"]}
    seen, report = set(), {}
    with Chromium() as browser:
        while queue:
            page = queue.pop(0).resolve()
            if page in seen:
                continue
            seen.add(page)
            res = check_page(browser, page)
            report[str(page.relative_to(root) if page.is_relative_to(root) else page)] = res["problems"]
            log(f"{'ok  ' if not res['problems'] else 'FAIL'} {page.relative_to(root)}: {res['images']} images, "
                f"{len(res['links'])} local links, {len(res['external'])} external (not followed)")
            for p in res["problems"]:
                log(f"     - {p}")
            queue += [t for t in res["links"] if t.suffix == ".html" and t.resolve() not in seen]
        if screenshot:
            check_page(browser, root / "index.html")
            browser.screenshot(screenshot)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="a run folder (e.g. the --out of pyinterp reproduce all)")
    ap.add_argument("--screenshot", help="also save a full-page PNG of ROOT/index.html here")
    args = ap.parse_args(argv)
    report = check_run(args.root, args.screenshot)
    bad = {k: v for k, v in report.items() if v}
    print(f"checked {len(report)} pages in headless Chromium: "
          + ("all fine" if not bad else f"{len(bad)} with problems"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
