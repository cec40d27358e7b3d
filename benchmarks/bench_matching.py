"""Feature matching: time and peak memory vs width, dense Hungarian vs the sparse candidate-graph solve.

Two synthetic decoders of d_in 576 (SmolLM2's width). Case "planted": 60% of SAE-2's rows are noisy copies of
SAE-1 rows, as for two SAEs trained with different seeds. Case "random": two independent random decoders (no
shared structure, like undertrained SAEs), where near-ties make the assignment hardest. Each run happens in a
fresh subprocess so its peak memory (VmHWM after resetting it, above the RSS holding the decoders) is its own.
Prints seconds (and per phase), peak MB, shared ratio, whether the result is certified optimal, its gap bound
and pricing rounds, the summed matched cosine, then the ratios between runs (and, where dense ran too, whether
the two summed cosines agree and how many pairs are identical). The sparse path logs each pricing round.

    python benchmarks/bench_matching.py [--widths 16384,32768,65536] [--dense-max 16384] [--k 32]
        [--cases planted,random]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import time
from pathlib import Path


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    return float("nan")


def decoders(width: int, case: str, d_in: int = 576):
    import torch
    from torch.nn.functional import normalize

    g = torch.Generator().manual_seed(width)
    A = normalize(torch.randn(width, d_in, generator=g), dim=1)
    B = normalize(torch.randn(width, d_in, generator=g), dim=1)
    if case == "planted":
        n = int(0.6 * width)
        perm = torch.randperm(width, generator=g)[:n]
        B[:n] = normalize(A[perm] + 0.6 * torch.randn(n, d_in, generator=g) / 24, dim=1)
    return A, B


def _one(width: int, case: str, method: str, k: int, out) -> None:
    import numpy as np
    import torch

    from saeval.analysis.matching import match_saes

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    A, B = decoders(width, case)
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.time()
    res = match_saes(A, B, method=method, k=k)
    seconds = time.time() - start
    out.put(
        {
            "width": width,
            "case": case,
            "method": res.method,
            "certified": res.certified,
            "rounds": res.rounds,
            "seconds": seconds,
            "peak_mb": _status("VmHWM") - base,
            "shared": res.shared_feature_ratio,
            "top1": res.top1_ratio,
            "gap": res.gap,
            "value": float(res.similarity.astype("float64").sum()),
            "phases": res.phases,
        }
    )
    np.save(_pairs_file(width, case, method), np.stack([res.rows, res.cols]))


def _pairs_file(width: int, case: str, method: str) -> Path:
    return Path("/tmp") / f"bench_matching_{case}_{width}_{method}.npy"


def _same_pairs(case: str, width: int) -> float:
    import numpy as np

    pairs = [np.load(_pairs_file(width, case, m)) for m in ("sparse", "dense")]
    sets = [set(zip(p[0].tolist(), p[1].tolist(), strict=True)) for p in pairs]
    return len(sets[0] & sets[1]) / max(len(sets[1]), 1)


def run(width: int, case: str, method: str, k: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_one, args=(width, case, method, k, q))
    p.start()
    result = q.get()
    p.join()
    return result


def _round(v):
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return round(v, 4) if isinstance(v, float) else v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="16384,32768,65536")
    ap.add_argument("--dense-max", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--cases", default="planted,random")
    args = ap.parse_args()
    rows = []
    for case in args.cases.split(","):
        for w in [int(x) for x in args.widths.split(",")]:
            for method in ("sparse", "dense"):
                if method == "dense" and w > args.dense_max:
                    continue
                r = run(w, case, method, args.k)
                rows.append(r)
                print(json.dumps(_round(r)), flush=True)
    by = {(r["case"], r["width"], r["method"].split("(")[0]): r for r in rows}
    print(
        f"{'case':8} {'width':>6} {'method':12} {'seconds':>8} {'peak MB':>8} {'shared':>7} {'cert':>5} {'gap':>8} "
        f"{'rounds':>6}"
    )
    for r in rows:
        print(
            f"{r['case']:8} {r['width']:6d} {r['method']:12} {r['seconds']:8.1f} {r['peak_mb']:8.0f} "
            f"{r['shared']:7.4f} {r['certified']!s:>5} {r['gap']:8.2g} {r['rounds']:6d}"
        )
    for case, w in sorted({(c, w) for c, w, _ in by}):
        if (case, w, "dense") in by and (case, w, "sparse") in by:
            d, s = by[(case, w, "dense")], by[(case, w, "sparse")]
            print(
                f"{case} width {w}: sparse/dense time {s['seconds'] / d['seconds']:.3f}, memory "
                f"{s['peak_mb'] / max(d['peak_mb'], 1e-9):.2f}, shared ratio dense {d['shared']:.4f} sparse "
                f"{s['shared']:.4f}, summed cosine dense {d['value']:.4f} sparse {s['value']:.4f} (relative difference "
                f"{abs(s['value'] - d['value']) / abs(d['value']):.1e}), identical pairs {_same_pairs(case, w):.4f} "
                f"(sparse certified: {s['certified']}, gap bound {s['gap']:.2g})"
            )
    for case in args.cases.split(","):
        for method in ("sparse", "dense"):
            ws = sorted(w for c, w, m in by if c == case and m == method)
            for a, b in zip(ws, ws[1:], strict=False):
                ra, rb = by[(case, a, method)], by[(case, b, method)]
                growth = rb["peak_mb"] / max(ra["peak_mb"], 1e-9)
                print(
                    f"{case} {method}: width x{b / a:.0f} ({a} -> {b}): time x{rb['seconds'] / ra['seconds']:.2f}, "
                    f"peak memory x{growth:.2f}"
                )


if __name__ == "__main__":
    main()
