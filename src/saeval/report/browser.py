"""Open a report in headless Chromium (through playwright, a dev dependency) and measure it: load times, plots
drawn, console errors, a screenshot. Used by the browser test and benchmarks/bench_report.py."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Without the background-networking flags, Chromium's own connections are refused on offline machines and
# slow the start; a fresh profile keeps runs independent.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]

# True once every figure div (this report's placeholders, or the old inline plotly divs) holds plotly's SVG.
ALL_DRAWN = """() => {
  const divs = [...document.querySelectorAll('div.plot, div.plotly-graph-div')]
    .filter(d => !d.closest('details:not([open])'));
  return divs.length > 0 && divs.every(d => d.querySelector('.main-svg'));
}"""


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    dom_content_loaded_s: float
    load_s: float
    first_contentful_paint_s: float | None
    plots_drawn_s: float | None
    n_plots: int
    n_empty_plots: int
    console_errors: list[str] = field(default_factory=list)
    summary_rows: list[str] = field(default_factory=list)
    page_height_px: int = 0
    max_table_overflow_px: int = 0
    # The summary's L0 column after one click on its header (numbers, in the order shown).
    l0_after_sort: list[float] = field(default_factory=list)


def open_report(path: Path, screenshot: Path | None = None, timeout_s: float = 60.0,
                open_details: bool = False) -> PageLoad:
    """Load ``path`` in headless Chromium, wait for every visible figure to be drawn, and report what it saw.
    ``open_details`` opens every collapsed block afterwards and waits for the figures inside to draw too."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no chromium on PATH (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="saeval-chromium-")
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=exe, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900})
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(Path(path).resolve().as_uri(), wait_until="load", timeout=timeout_s * 1000)
            drawn_s = None
            try:
                page.wait_for_function(ALL_DRAWN, polling=50, timeout=timeout_s * 1000)
                drawn_s = page.evaluate("performance.now()") / 1000
            except Exception:  # noqa: BLE001  (timed out: reported as not drawn)
                pass
            timing = page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
                const p = performance.getEntriesByName('first-contentful-paint')[0];
                return [n.domContentLoadedEventEnd, n.loadEventEnd, p ? p.startTime : null]; }""")
            if open_details:
                page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
                page.wait_for_function(ALL_DRAWN, polling=100, timeout=timeout_s * 1000)
            stats = page.evaluate("""() => {
                const divs = [...document.querySelectorAll('div.plot, div.plotly-graph-div')]
                  .filter(d => !d.closest('details:not([open])'));
                // drawn, and with at least one trace holding data
                const empty = divs.filter(d => !d.querySelector('.main-svg') || !(d._fullData || []).some(t =>
                  ['x', 'y'].some(k => t[k] && t[k].length > 0)));
                const rows = [...document.querySelectorAll('#summary-table tbody tr td:first-child')]
                  .map(td => td.textContent);
                const over = [...document.querySelectorAll('table')].map(t => t.scrollWidth -
                  (t.closest('.tw') || t.parentElement).clientWidth);
                return [divs.length, empty.length, rows, document.documentElement.scrollHeight,
                        Math.max(0, ...over)]; }""")
            l0_sorted = page.evaluate("""() => { const t = document.getElementById('summary-table');
                if (!t) return [];
                const col = [...t.tHead.rows[0].cells].findIndex(c => c.textContent.trim() === 'L0');
                t.tHead.rows[0].cells[col].click();
                return [...t.tBodies[0].rows].map(r => r.cells[col].dataset.v).filter(v => v !== undefined)
                  .map(Number); }""")
            if screenshot is not None:
                page.evaluate("window.scrollTo(0, 0)")
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    dcl, load, fcp = timing
    return PageLoad(dcl / 1000, load / 1000, None if fcp is None else fcp / 1000, drawn_s, stats[0], stats[1],
                    errors, stats[2], stats[3], stats[4], l0_sorted)
