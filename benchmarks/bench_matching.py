"""Feature matching: time and peak memory vs width, dense Hungarian vs the sparse candidate-graph solve.

Two synthetic decoders of d_in 576 (SmolLM2's width) where 60% of SAE-2's rows are noisy copies of SAE-1 rows,
as for two SAEs trained with different seeds. Each run happens in a fresh subprocess so its peak memory
(VmHWM after resetting it) is its own. Prints seconds, peak MB, shared ratio and the ratios between runs.

    python benchmarks/bench_matching.py [--widths 4096,8192,16384] [--dense-max 16384] [--k 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    return float("nan")


def _one(width: int, method: str, k: int, out) -> None:
    import torch

    from saeval.evals.matching import match_saes

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(width)
    A = torch.nn.functional.normalize(torch.randn(width, 576, generator=g), dim=1)
    B = torch.nn.functional.normalize(torch.randn(width, 576, generator=g), dim=1)
    n = int(0.6 * width)
    perm = torch.randperm(width, generator=g)[:n]
    B[:n] = torch.nn.functional.normalize(A[perm] + 0.6 * torch.randn(n, 576, generator=g) / 24, dim=1)
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.time()
    res = match_saes(A, B, method=method, k=k)
    seconds = time.time() - start
    out.put({"width": width, "method": res.method, "exact": res.exact, "seconds": seconds,
             "peak_mb": _status("VmHWM") - base, "shared": res.shared_feature_ratio, "top1": res.top1_ratio})


def run(width: int, method: str, k: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_one, args=(width, method, k, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="4096,8192,16384")
    ap.add_argument("--dense-max", type=int, default=16384)
    ap.add_argument("--k", type=int, default=8)
    args = ap.parse_args()
    rows = []
    for w in [int(x) for x in args.widths.split(",")]:
        for method in ("sparse", "dense"):
            if method == "dense" and w > args.dense_max:
                continue
            r = run(w, method, args.k)
            rows.append(r)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    by = {(r["width"], r["method"].split("(")[0]): r for r in rows}
    widths = sorted({r["width"] for r in rows})
    for w in widths:
        if (w, "dense") in by and (w, "sparse") in by:
            d, s = by[(w, "dense")], by[(w, "sparse")]
            print(f"width {w}: sparse/dense time {s['seconds'] / d['seconds']:.2f}, memory "
                  f"{s['peak_mb'] / max(d['peak_mb'], 1e-9):.2f}, shared ratio dense {d['shared']:.4f} sparse "
                  f"{s['shared']:.4f} (sparse certified exact: {s['exact']})")
    for method in ("sparse", "dense"):
        ws = [w for w in widths if (w, method) in by]
        for a, b in zip(ws, ws[1:], strict=False):
            ta, tb = by[(a, method)]["seconds"], by[(b, method)]["seconds"]
            ma, mb = by[(a, method)]["peak_mb"], by[(b, method)]["peak_mb"]
            growth = mb / max(ma, 1e-9)
            print(f"{method}: width x{b / a:.0f} ({a} -> {b}): time x{tb / ta:.2f}, peak memory x{growth:.2f}")


if __name__ == "__main__":
    main()
