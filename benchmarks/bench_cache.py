"""Cost of verifying a cache entry on load: an activation cache of realistic size (64 MiB of float32 shards at
SmolLM2's width) opened and read with full checksums, with the size check only, and with no verification.
Repeats are interleaved (load from other processes hits every variant alike) and the best of each is kept;
files are in the page cache, the case where hashing costs most relative to reading."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch


class FakeHost:
    """Activations without a model: the cost measured is the cache's, not a forward pass's."""

    name, d_model = "bench-host", 576

    def fingerprint(self) -> str:
        return "bench-weights"

    def capture(self, tokens, hooks):
        return {hooks[0]: torch.randn(*tokens.shape, self.d_model)}

    def ordinary_mask(self, tokens):
        return torch.ones_like(tokens, dtype=torch.bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shard-tokens", type=int, default=8192)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="saeval-bench-cache-")
    os.environ["SAEVAL_CACHE"] = folder
    try:
        run(args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args) -> None:
    from saeval.data.activations import ActivationCache
    from saeval.data.cache import checksum

    host, ctx = FakeHost(), 128
    n_contexts = args.mib * 2**20 // (4 * host.d_model * ctx)
    contexts = torch.randint(1, 1000, (n_contexts, ctx))
    hook = "blocks.15.hook_resid_post"
    built = ActivationCache.build(host, hook, "bench", contexts, shard_tokens=args.shard_tokens)
    size = sum(s.stat().st_size for s in built.shards)

    def full():
        ActivationCache.build(host, hook, "bench", contexts, verify="full").load_all()

    def size_only():
        ActivationCache.build(host, hook, "bench", contexts, verify="size").load_all()

    def none():
        ActivationCache(built.folder).load_all()

    def hash_only():
        for shard in built.shards:
            checksum(shard)

    variants = {"full checksums": full, "size check only": size_only, "no verification": none,
                "blake2b, 1 thread": hash_only}
    best = dict.fromkeys(variants, float("inf"))
    for fn in variants.values():
        fn()  # warm the page cache and the code paths
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"entry: {len(built.shards)} shards, {size / 2**20:.1f} MiB, {built.n_tokens} tokens x {host.d_model}")
    for name, seconds in best.items():
        print(f"{name:>17}: {seconds * 1e3:7.1f} ms  ({size / 2**20 / seconds:6.0f} MiB/s)")
    print(f"load with full checksums / without verification: {best['full checksums'] / best['no verification']:.2f}x")
    print(f"load with size check / without verification:     {best['size check only'] / best['no verification']:.2f}x")


if __name__ == "__main__":
    main()
