"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) renders the report
of a small run to a PNG, and the page must load without console errors, show the leaderboard, the
claims table and figures, and not overflow sideways (wide tables scroll inside their box).

How it is checked without a devtools client: a copy of the page gets a first script that records
``console.error`` calls and uncaught errors, and a last one that writes them, the page's
scroll width and the table/figure counts into ``<body data-*>`` attributes; ``--dump-dom`` returns
the DOM after the scripts ran. A planted console error proves the probe can fail. Chromium's own
``--enable-logging=stderr`` console lines are checked too.

Skips (with the reason) only when no chromium binary can be found; ``.ci/run`` installs it.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import warnings

import pytest

from conftest import run_harness


class ScreenshotPath(UserWarning):
    """Carries the rendered report's PNG path into pytest's warnings summary (the artifact)."""

WIDTH, HEIGHT = 1280, 2400

PROBE_HEAD = """<script>
window.__errors = [];
const __err = console.error.bind(console);
console.error = (...a) => { window.__errors.push(a.map(String).join(' ')); __err(...a); };
window.addEventListener('error', e => window.__errors.push('uncaught: ' + e.message));
</script>"""
PROBE_TAIL = """<script>
window.addEventListener('load', () => {});
const b = document.body;
b.setAttribute('data-errors', JSON.stringify(window.__errors));
b.setAttribute('data-scroll-width', String(document.documentElement.scrollWidth));
b.setAttribute('data-client-width', String(document.documentElement.clientWidth));
b.setAttribute('data-n-tables', String(document.querySelectorAll('table').length));
b.setAttribute('data-n-images', String([...document.images].filter(i => i.naturalWidth > 0 || i.src.startsWith('data:image')).length));
b.setAttribute('data-h2', JSON.stringify([...document.querySelectorAll('h2')].map(h => h.textContent)));
b.setAttribute('data-img-right', String(Math.max(0, ...[...document.images].map(i => i.getBoundingClientRect().right))));
b.setAttribute('data-table-right', String(Math.max(0, ...[...document.querySelectorAll('div.scroll')].map(d => d.getBoundingClientRect().right))));
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary: apt-get install -y chromium (.ci/run installs it where it can)")


def _flags(browser: str) -> list[str]:
    return [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-extensions", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def _probe(page: Path, out: Path) -> Path:
    text = page.read_text(encoding="utf-8")
    text = text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1)
    out.write_text(text, encoding="utf-8")
    return out


def dump(browser: str, page: Path) -> tuple[dict[str, str], str]:
    """Body data-* attributes after the page ran, and chromium's stderr."""
    proc = subprocess.run([*_flags(browser), "--dump-dom", page.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    attrs = dict(re.findall(r'data-([a-z0-9-]+)="([^"]*)"', body.group(1)))
    return {k: v.replace("&quot;", '"').replace("&amp;", "&") for k, v in attrs.items()}, proc.stderr


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line and ("error" in line.lower())]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_the_probe_catches_a_planted_console_error(tmp_path):
    browser = chromium()
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head></head><body><p>x</p>"
                    "<script>console.error('planted failure')</script></body></html>")
    attrs, _ = dump(browser, _probe(page, tmp_path / "bad.probe.html"))
    assert "planted failure" in attrs["errors"]


def test_report_renders_in_chromium(tmp_path, capsys):
    browser = chromium()
    proc = run_harness("experiment=one_third", "model.d=16", "model.vocab=32", "model.steps=300",
                       "model.batch_size=256", "model.n_checkpoints=12", f"results_dir={tmp_path}",
                       "run_name=browser", "progress=off", "print_config=false", env={"OMP_NUM_THREADS": "1"},
                       timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = tmp_path / "browser" / "report" / "report.html"
    assert page.is_file()

    attrs, stderr = dump(browser, _probe(page, page.with_name("report.probe.html")))
    assert attrs["errors"] == "[]", attrs["errors"]
    assert not console_lines(stderr), console_lines(stderr)
    import json

    headings = json.loads(attrs["h2"])
    assert "leaderboard" in headings and "claims" in headings, headings
    # ranking first, then the claims, then the relation tables, then figures, then the long tables
    order = ["leaderboard", "claims", "verdicts", "relation_model", "loss curves", "trajectories (value vs step)",
             "metric figures", "trajectories", "status"]
    assert all(h in headings for h in order), headings
    assert [headings.index(h) for h in order] == sorted(headings.index(h) for h in order), headings
    assert int(attrs["n-tables"]) >= 3
    assert int(attrs["n-images"]) >= 3  # loss curves, trajectories, the time_scaling fit: embedded, decoded
    # nothing overflows the page sideways: wide tables scroll inside their own box, figures shrink to fit
    client = int(attrs["client-width"])
    assert int(attrs["scroll-width"]) <= client, attrs
    assert float(attrs["img-right"]) <= client and float(attrs["table-right"]) <= client, attrs

    png = tmp_path / "report.png"
    shot = subprocess.run([*_flags(browser), f"--screenshot={png}", page.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    assert png_size(png) == (WIDTH, HEIGHT) and png.stat().st_size > 20_000  # a rendered page, not blank
    with capsys.disabled():
        print(f"\nreport screenshot: {png}")
    # under pytest-xdist (the default) a worker's print never reaches the terminal; a warning is
    # shown in the session's warnings summary either way, so the artifact path is always in the output
    warnings.warn(ScreenshotPath(f"report screenshot: {png}"))
