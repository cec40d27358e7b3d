"""Ray backend overhead on this machine (local Ray instance, tiny random Llama, small TopK SAEs).

Prints, each measured in this run:
- Ray's overhead per job: the slope of wall time over the number of no-op jobs (the `slow` test plugin with
  sleep 0), so worker start and model load, paid once per run, drop out;
- jobs/s of a real eval (core, tiny preset) with 1 and 2 Ray workers, and on the local backend;
- the ratio of a 4-SAE run's wall time under Ray (2 workers) to the local backend on the same request.

    python benchmarks/bench_ray.py [--saes 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]
os.environ.setdefault("SAEVAL_QUIET", "1")


def build(root: Path, n: int) -> tuple[Path, list[str]]:
    from conftest import make_tiny_llama_host
    from transformers import AutoTokenizer

    from saeval.hosts.lm import _embedded_smollm2_dir
    from saeval.saes import SAEConfig, create_sae
    from saeval.saes.formats import save_sae

    host = make_tiny_llama_host(AutoTokenizer.from_pretrained(_embedded_smollm2_dir()))
    host.model.save_pretrained(root / "model")
    host.tokenizer.save_pretrained(root / "model")
    refs = []
    for i in range(n):
        torch.manual_seed(i)
        sae = create_sae(SAEConfig(architecture="topk", d_in=64, d_sae=256, k=8, hook_name="blocks.1.hook_resid_post",
                                   name=f"s{i:02d}"))
        with torch.no_grad():
            sae.W_enc.normal_()  # a zero encoder would reconstruct nothing
        refs.append(str(save_sae(sae, root / f"s{i:02d}")))
    return root / "model", refs


def timed_run(model: Path, refs: list[str], out: Path, evals: list[str], backend: str, workers: int,
              sets: dict) -> float:
    from saeval.runner.execute import execute
    from saeval.runner.request import build_request

    flags = {"model": str(model), "saes": refs, "evals": evals, "out": out, "preset": "tiny", "backend": backend,
             "workers": workers, "plugins": ["ray_plugin"], "force": True}
    request = build_request({}, flags, sets)
    start = time.perf_counter()
    outcomes = execute(request)
    assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes if o.status != "done"]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--saes", type=int, default=8)
    args = parser.parse_args()
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False)
    print(f"ray.init (local instance): {time.perf_counter() - t:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, refs = build(root, max(args.saes, 16))
        noop = {"slow": {"sleep": 0.0}}
        few = timed_run(model, refs[:4], root / "n4", ["slow"], "ray", 1, noop)
        many = timed_run(model, refs[:16], root / "n16", ["slow"], "ray", 1, noop)
        print(f"no-op jobs on 1 Ray worker: 4 jobs {few:.2f}s, 16 jobs {many:.2f}s -> "
              f"overhead {(many - few) / 12 * 1000:.0f} ms per job (startup and model load excluded)")
        n = args.saes
        core = {"core": {"n_eval_tokens": 2048, "n_density_tokens": 4096}}
        local = timed_run(model, refs[:n], root / "local", ["core"], "local", 1, core)
        one = timed_run(model, refs[:n], root / "ray1", ["core"], "ray", 1, core)
        two = timed_run(model, refs[:n], root / "ray2", ["core"], "ray", 2, core)
        print(f"core (tiny) on {n} SAEs: local {n / local:.2f} jobs/s ({local:.1f}s), Ray 1 worker "
              f"{n / one:.2f} jobs/s ({one:.1f}s), Ray 2 workers {n / two:.2f} jobs/s ({two:.1f}s); "
              f"2 vs 1 worker x{one / two:.2f}")
        local4 = timed_run(model, refs[:4], root / "l4", ["core"], "local", 1, core)
        ray4 = timed_run(model, refs[:4], root / "r4", ["core"], "ray", 2, core)
        print(f"4 SAEs, core: Ray (2 workers) / local wall time = {ray4:.1f}s / {local4:.1f}s = {ray4 / local4:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
