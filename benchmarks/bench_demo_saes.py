"""The demo SAEs' training sweep: for each (d_sae, k, lr, batch, training tokens), two seeds trained together
(saeval.saes.train.train_saes) on SmolLM2's State of the Union activations at the demo hook, checked after each
epoch of interest. Prints one row per point: training seconds (wall and process CPU, cumulative to that epoch),
the Hungarian shared feature ratio of the two seeds (decoder cosine above 0.7, match_saes), the seed-0 SAE's
explained variance and fraction of latents alive on held-out tokens. The contexts are the faithful study's
(split_contexts, data seed 1), so a point's SAEs are the ones that study trains with the same settings.

    SAEVAL_CACHE=/tmp/my_cache python benchmarks/bench_demo_saes.py [--threads 1]
        [--points 1152,16,3e-3,256,24576,8:12:16 ...]
"""

from __future__ import annotations

import argparse
import time

DEFAULT_POINTS = [
    "1152,16,3e-3,256,24576,4:8:12:16",
    "1152,16,6e-3,256,24576,4:8:12",
    "576,16,3e-3,256,24576,4:8:12:16",
    "1152,16,3e-3,512,24576,8:16",
    "1152,16,3e-3,256,49152,4:8",
    "2304,16,3e-3,256,24576,8:12",
]


def parse_point(text: str) -> dict:
    d_sae, k, lr, batch, tokens, epochs = text.split(",")
    return {"d_sae": int(d_sae), "k": int(k), "lr": float(lr), "batch": int(batch), "tokens": int(tokens),
            "epochs": sorted(int(e) for e in epochs.split(":"))}


def held_out_stats(sae, acts):
    import torch

    with torch.no_grad():
        f = sae.encode(acts)
        err = (acts - sae.decode(f)).pow(2).sum()
        total = (acts - acts.mean(0)).pow(2).sum()
        return float(1 - err / total), float((f > 0).any(0).float().mean())


def run_point(host, point: dict, eval_tokens: int) -> list[dict]:
    import torch

    from saeval.analysis.matching import match_saes
    from saeval.data.activations import ActivationCache
    from saeval.demo import DEMO_CORPUS, DEMO_HOOK
    from saeval.saes.train import TrainConfig, train_saes
    from saeval.studies.faithful.config import FaithfulConfig
    from saeval.studies.faithful.run import split_contexts

    config = FaithfulConfig(train_tokens=point["tokens"], eval_tokens=eval_tokens)
    train_ctx, held_ctx = split_contexts(host, DEMO_CORPUS, config)
    acts = ActivationCache.build(host, DEMO_HOOK, DEMO_CORPUS, train_ctx)
    held = ActivationCache.build(host, DEMO_HOOK, DEMO_CORPUS, held_ctx).load_all().float()
    configs = [TrainConfig(d_sae=point["d_sae"], k=point["k"], lr=point["lr"], batch_size=point["batch"],
                           epochs=point["epochs"][-1], dead_tokens=50_000, seed=seed) for seed in (0, 1)]
    rows = []
    clock = {"wall": time.time(), "cpu": time.process_time(), "paused_wall": 0.0, "paused_cpu": 0.0}

    def on_epoch(epoch, saes):
        if epoch not in point["epochs"]:
            return
        wall, cpu = time.time(), time.process_time()
        shared = match_saes(saes[0], saes[1]).shared_feature_ratio
        ev, alive = held_out_stats(saes[0], held)
        rows.append({**{k: point[k] for k in ("d_sae", "k", "lr", "batch", "tokens")}, "epochs": epoch,
                     "train_s": wall - clock["wall"] - clock["paused_wall"],
                     "train_cpu_s": cpu - clock["cpu"] - clock["paused_cpu"],
                     "shared": shared, "ev": ev, "alive": alive})
        print(format_row(rows[-1]), flush=True)
        clock["paused_wall"] += time.time() - wall
        clock["paused_cpu"] += time.process_time() - cpu

    torch.manual_seed(0)
    train_saes(acts, acts.n_tokens, host.d_model, configs, DEMO_HOOK, host.name, on_epoch=on_epoch)
    return rows


HEADER = f"{'d_sae':>6} {'k':>3} {'lr':>7} {'batch':>5} {'tokens':>7} {'epochs':>6} {'wall_s':>7} {'cpu_s':>7} " \
         f"{'shared':>7} {'ev':>6} {'alive':>6}"


def format_row(r: dict) -> str:
    return (f"{r['d_sae']:>6} {r['k']:>3} {r['lr']:>7.0e} {r['batch']:>5} {r['tokens']:>7} {r['epochs']:>6} "
            f"{r['train_s']:>7.1f} {r['train_cpu_s']:>7.1f} {r['shared']:>7.3f} {r['ev']:>6.3f} {r['alive']:>6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="*", default=DEFAULT_POINTS,
                        help="d_sae,k,lr,batch,tokens,epoch:epoch:... per point")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    args = parser.parse_args()
    import torch

    from saeval.demo import DEMO_MODEL
    from saeval.hosts import LanguageHost

    if args.threads:
        torch.set_num_threads(args.threads)
    host = LanguageHost.load(DEMO_MODEL)
    print(HEADER, flush=True)
    rows = [row for text in args.points for row in run_point(host, parse_point(text), args.eval_tokens)]
    print("\n" + HEADER)
    for row in rows:
        print(format_row(row))


if __name__ == "__main__":
    main()
