"""Size and headless-Chromium load time of the HTML report of a results folder.

    python benchmarks/bench_report.py OUT [--old-src /path/to/old/src]

Builds OUT's report with this checkout (and, with --old-src, with another checkout's code in a subprocess, for a
before/after ratio in one run), then prints bytes, DOMContentLoaded, load, first contentful paint and the time
until every figure is drawn. Needs playwright (dev extra) and a chromium on PATH."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from saeval.report import build_report
from saeval.report.browser import chromium_path, open_report


def measure(label: str, path: Path) -> dict[str, float]:
    load = open_report(path)
    row = {"bytes": path.stat().st_size, "dcl_s": load.dom_content_loaded_s, "load_s": load.load_s,
           "fcp_s": load.first_contentful_paint_s or float("nan"),
           "plots_s": load.plots_drawn_s if load.plots_drawn_s is not None else float("nan")}
    print(f"{label:6s} {row['bytes'] / 1e6:6.2f} MB  DOMContentLoaded {row['dcl_s']:5.2f} s  load "
          f"{row['load_s']:5.2f} s  first paint {row['fcp_s']:5.2f} s  all {load.n_plots} plots drawn "
          f"{row['plots_s']:5.2f} s  empty plots {load.n_empty_plots}  console errors {len(load.console_errors)}  "
          f"height {load.page_height_px} px  widest table overflow {load.max_table_overflow_px} px")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--old-src", type=Path, help="src folder of another checkout, built for comparison")
    args = parser.parse_args()
    if chromium_path() is None:
        sys.exit("no chromium on PATH: apt-get install chromium")
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    rows = {}
    if args.old_src:
        old = work / "old.html"
        code = (f"from pathlib import Path; from saeval.report import build_report; "
                f"build_report(Path({str(args.out)!r}), Path({str(old)!r}))")
        subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(args.old_src),
                                                                      "PATH": "/usr/bin:/bin"})
        rows["before"] = measure("before", old)
    rows["after"] = measure("after", build_report(args.out, work / "new.html"))
    if "before" in rows:
        b, a = rows["before"], rows["after"]
        print(f"after/before: size {a['bytes'] / b['bytes']:.2f}, load {a['load_s'] / b['load_s']:.2f}, "
              f"first paint {a['fcp_s'] / b['fcp_s']:.2f}, all plots drawn {a['plots_s'] / b['plots_s']:.2f}")


if __name__ == "__main__":
    main()
