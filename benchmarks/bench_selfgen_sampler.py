"""Self-generated corpus sampler on SmolLM2-135M (CPU): one batch of 128 samples x 127 new tokens from BOS at
temperature 1, through HF generate with the inverse-CDF logits processor (the old path, cut at the first special
token) and through LanguageHost.sample_unconditional (the loop selfgen uses), same seed. Prints both times and
ms per step (best of 2 alternated runs each), against each other and the bare-forward reference of this
machine, how many rows ended early and how many rows differ between the two. Then samples the faithful demo's
second batch and counts the complete samples (127 tokens, no special token) its 208 contexts need from its two
batches.
"""

from __future__ import annotations

import time

import torch
from _common import bare_forward_seconds

from saeval.data.selfgen import _cut
from saeval.hosts import LanguageHost

BATCH, NEW, TEMPERATURE = 128, 127, 1.0
ROUNDS = 2
DEMO_SEED, DEMO_CONTEXTS = 1, 208  # faithful demo preset: data_seed 1, (24576 + 2048) tokens / ctx_len 128


def batch_seed(batch: int) -> int:
    return DEMO_SEED * 1_000_003 + batch  # as selfgen.generate_documents seeds batch b


def old_path(host, seed: int) -> list[list[int]]:
    prompt = torch.full((BATCH, 1), host.bos_id, dtype=torch.long)
    new = host.generate(prompt, torch.ones_like(prompt), max_new_tokens=NEW, temperature=TEMPERATURE, seed=seed)
    return [_cut(row, host.special_ids).tolist() for row in new]


def new_path(host, seed: int) -> list[list[int]]:
    return host.sample_unconditional(BATCH, NEW, TEMPERATURE, seed, stop_ids=host.special_ids)


def timed(fn, *args) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def complete(rows: list[list[int]]) -> int:
    return sum(len(row) == NEW for row in rows)


def main() -> None:
    torch.manual_seed(0)
    host = LanguageHost.load("smollm2-135m")
    bare = bare_forward_seconds(host)
    host.sample_unconditional(4, 4, seed=0)  # warm-up
    # Alternated, best of ROUNDS each: a burst of load from another process slows one run, not the best.
    runs = [(timed(old_path, host, batch_seed(0)), timed(new_path, host, batch_seed(0))) for _ in range(ROUNDS)]
    t_old, t_new = min(o[0] for o, _ in runs), min(n[0] for _, n in runs)
    old, new = runs[0][0][1], runs[0][1][1]
    assert all(o[1] == old and n[1] == new for o, n in runs), "a sampler gave other samples for the same seed"
    differ = sum(a != b for a, b in zip(old, new, strict=True))
    first = next((i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b), None)
    # Forward passes per row: the old path computes every row at all NEW steps (one sample always runs to the
    # end), the new one a row until the step that emits its stop token (prefill plus one pass per kept token).
    steps = NEW
    row_steps_new = sum(min(len(row) + 1, NEW) for row in new)

    print(f"SmolLM2-135M, one batch of {BATCH} x {NEW} new tokens from BOS, T={TEMPERATURE}, seed {batch_seed(0)}")
    print(f"bare forward 8 x 128 tokens (best of 3): {bare * 1000:.0f} ms")
    print(f"old (HF generate + inverse-CDF processor, cut): {t_old:.1f} s, {t_old / steps * 1000:.0f} ms/step "
          f"-> old / bare = {t_old / bare:.0f}")
    print(f"new (sample_unconditional): {t_new:.1f} s, {t_new / steps * 1000:.0f} ms/step "
          f"-> new / bare = {t_new / bare:.0f}, new / old = {t_new / t_old:.2f}")
    print(f"rows ended early: {BATCH - complete(new)} of {BATCH}; the new loop computed {row_steps_new} row-steps, "
          f"the old {BATCH * steps} ({row_steps_new / (BATCH * steps):.2f})")
    print(f"rows differing between old and new: {differ} of {BATCH}"
          + ("" if first is None else f" (first: row {first})"))

    second = new_path(host, batch_seed(1))
    counts = (complete(new), complete(second))
    print(f"faithful demo (seed {DEMO_SEED}): complete samples per batch {counts[0]} + {counts[1]} = {sum(counts)}, "
          f"needs {DEMO_CONTEXTS} from 2 batches: {'enough' if sum(counts) >= DEMO_CONTEXTS else 'NOT enough'}")


if __name__ == "__main__":
    main()
