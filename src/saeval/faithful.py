"""FaithfulSAE's data comparison (arXiv 2506.17673, methods.md C2): SAEs trained on the host's own text vs on a
human corpus.

Two SAEs (two seeds) are trained with one config on each corpus: a human corpus (State of the Union by default)
and the host's unconditional samples ("self-generated": BOS prompt, temperature 1). Each corpus's contexts are
split once into disjoint training and held-out parts. The study reports:

- the shared feature ratio and top-1 ratio between the two seeds of each corpus (FaithfulSAE's stability claim:
  SAEs trained on the model's own text share more features across seeds), and between the two corpora;
- the cross-data table: each corpus's seed-0 SAE evaluated on the held-out part of both corpora (explained
  variance, FaithfulSAE's 1 - Var(x - xhat) / Var(x), L2 loss, CE increase when spliced in).

SAEs are cached per (model, hook, corpus, sizes, training config, seed); the result is one JSON file
(``faithful.json``, written atomically; a rerun reuses it unless ``force``) and a report section.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from torch import Tensor

from saeval.assets import cache_dir
from saeval.data.activations import ActivationCache
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.matching import THRESHOLD, cross_data_metrics, match_saes
from saeval.results import write_json_atomic
from saeval.saes.train import TrainConfig, train_sae

SELF = "self-generated"
RESULT_FILE = "faithful.json"
SECTION_FILE = "faithful.section.html"


class FaithfulConfig(BaseModel):
    corpus: str = "sotu"  # the human corpus the model's own text is compared with
    train_tokens: int = 131_072  # per corpus (the demo SAEs' budget)
    eval_tokens: int = 8_192  # held-out tokens per corpus for the cross-data table
    ctx_len: int = 128
    seeds: tuple[int, int] = (0, 1)
    # The paper's TopK SAEs: k=16 and a 16x dictionary (GPT-2's 12,288 = 16 x 768). train.d_sae is replaced
    # by expansion x the host's d_model (see sae_train_config), so a preset suits any model.
    expansion: int = 16
    train: TrainConfig = TrainConfig(k=16, batch_size=512, epochs=2, dead_tokens=50_000)
    data_seed: int = 1  # order of the contexts (and the generation seed of the self-generated text)
    threshold: float = THRESHOLD
    temperature: float = 1.0


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # About 4 minutes on a 2-core CPU: 24,576 training tokens per corpus and 2,048 held-out tokens (two
    # generation batches of the host's own text, 256 samples, cover both). So few tokens only train a small
    # dictionary: measured on SmolLM2 and SOTU, two seeds of 4608 latents (k 32, lr 1e-3, 2 epochs) shared 0.0 of
    # their features, 1152 (2 x 576) with the paper's k=16 at lr 3e-3 for 8 epochs share 0.19 (16 epochs: 0.30).
    "demo": {
        "train_tokens": 24_576,
        "eval_tokens": 2_048,
        "expansion": 2,
        "train": {"k": 16, "lr": 3e-3, "batch_size": 256, "epochs": 8, "dead_tokens": 50_000},
    },
    "tiny": {
        "train_tokens": 2_048,
        "eval_tokens": 512,
        "ctx_len": 32,
        "expansion": 1,
        "train": {"k": 4, "lr": 3e-3, "batch_size": 128, "epochs": 2, "dead_tokens": 2_000},
    },
}


def faithful_config(preset: str = "paper", **overrides: Any) -> FaithfulConfig:
    if preset not in PRESETS:
        raise SaevalError(f"faithful study has no preset {preset!r}; presets: {', '.join(PRESETS)}")
    return FaithfulConfig(**{**PRESETS[preset], **overrides})


def split_contexts(host, corpus: str, config: FaithfulConfig) -> tuple[Tensor, Tensor]:
    """Disjoint (training, held-out) contexts of ``corpus``: one seeded draw, cut in two."""
    n_train = -(-config.train_tokens // config.ctx_len)
    n_eval = -(-config.eval_tokens // config.ctx_len)
    contexts = load_contexts(host, corpus, (n_train + n_eval) * config.ctx_len, config.ctx_len, config.data_seed)
    return contexts[:n_train], contexts[n_train : n_train + n_eval]


def sae_train_config(host, config: FaithfulConfig) -> TrainConfig:
    """The SAEs' training config: ``config.train`` with d_sae = expansion x the host's width."""
    return config.train.model_copy(update={"d_sae": config.expansion * host.d_model})


def _sae_folder(host, hook: str, corpus: str, config: FaithfulConfig, seed: int) -> Path:
    spec = [host.name, hook, corpus, config.train_tokens, config.eval_tokens, config.ctx_len, config.data_seed,
            config.temperature, sae_train_config(host, config).model_dump(mode="json"), seed]
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    tag = "selfgen" if corpus == SELF else Path(corpus).name.replace(":", "-")
    return cache_dir() / "faithful-saes" / f"{host.name}-{tag}-{config.train_tokens}-s{seed}-{digest}"


def study_saes(host, hook: str, corpus: str, config: FaithfulConfig, train_contexts: Tensor) -> list:
    """The two seeds' SAEs trained on ``train_contexts`` of ``corpus`` (cached on disk)."""
    from saeval.saes.formats import load_sae, save_sae

    saes, cache = [], None
    for seed in config.seeds:
        folder = _sae_folder(host, hook, corpus, config, seed)
        if not (folder / "cfg.json").exists():
            if cache is None:
                cache = ActivationCache.build(host, hook, corpus, train_contexts)
            cfg = sae_train_config(host, config).model_copy(update={"seed": seed})
            sae, _ = train_sae(cache, cache.n_tokens, host.d_model, cfg, hook, host.name, name=folder.name)
            save_sae(sae, folder)
        saes.append(load_sae(folder))
    return saes


def _match(a, b, threshold: float) -> dict[str, Any]:
    summary = match_saes(a, b, threshold).summary()
    for volatile in ("matched_cosine_histogram", "seconds"):  # timings differ run to run; JSON must not
        summary.pop(volatile)
    return {"sae_a": a.name, "sae_b": b.name, **summary}


def run_faithful(
    host, hook: str, config: FaithfulConfig, out_dir: Path | None = None, preset: str = "paper", force: bool = False
) -> dict[str, Any]:
    """Train (or load) the four SAEs, compare them; returns the result (also written to ``out_dir``)."""
    if out_dir is not None and (Path(out_dir) / RESULT_FILE).exists() and not force:
        return json.loads((Path(out_dir) / RESULT_FILE).read_text())
    host.hook(hook)  # a wrong hook fails here, before any generation or training
    if config.corpus == SELF:
        raise SaevalError("the faithful study compares the model's own text with another corpus: pick --corpus")
    corpora = (config.corpus, SELF)
    seconds: dict[str, float] = {}
    saes, held_out = {}, {}
    for corpus in corpora:
        t = time.time()
        train_ctx, held_out[corpus] = split_contexts(host, corpus, config)
        seconds[f"data {corpus}"] = time.time() - t
        t = time.time()
        saes[corpus] = study_saes(host, hook, corpus, config, train_ctx)
        seconds[f"train {corpus}"] = time.time() - t
    t = time.time()
    cross_seed = {corpus: _match(*saes[corpus], config.threshold) for corpus in corpora}
    # Across corpora only SAEs of different seeds are compared: two SAEs that share a seed share their random
    # initialisation, and short training leaves them near it (the same-seed check measures exactly that).
    human = saes[corpora[0]]
    own = saes[SELF]
    cross_corpus = [_match(human[i], own[1 - i], config.threshold) for i in range(2)]
    same_seed_check = [_match(human[i], own[i], config.threshold) for i in range(2)]
    seconds["matching"] = time.time() - t
    t = time.time()
    cross_data = []
    for trained_on in corpora:
        for evaluated_on in corpora:
            metrics = cross_data_metrics(host, saes[trained_on][0], evaluated_on, hook=hook,
                                         contexts_NL=held_out[evaluated_on])
            cross_data.append({"trained_on": trained_on, "evaluated_on": evaluated_on,
                               "sae": saes[trained_on][0].name, **metrics})
    seconds["cross_data"] = time.time() - t
    result = {
        "study": "faithful",
        "model": host.name,
        "hook": hook,
        "preset": preset,
        "config": config.model_copy(update={"train": sae_train_config(host, config)}).model_dump(mode="json"),
        "sizes": {c: {"train_contexts": -(-config.train_tokens // config.ctx_len),
                      "held_out_contexts": len(held_out[c])} for c in corpora},
        "saes": {c: [s.name for s in saes[c]] for c in corpora},
        "cross_seed": cross_seed,
        "cross_corpus": cross_corpus,
        "same_seed_check": same_seed_check,
        "cross_data": cross_data,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / RESULT_FILE, result)
        section = Path(out_dir) / SECTION_FILE
        tmp = section.with_suffix(".tmp")
        tmp.write_text(faithful_html(result))
        tmp.replace(section)
    return result


# ---------------------------------------------------------------------------------------------- HTML
def faithful_html(result: dict[str, Any]) -> str:
    cfg = result["config"]
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{m['shared_feature_ratio']:.4f}</td><td>{m['top1_ratio']:.4f}</td>"
        f"<td>{m['mean_matched_cosine']:.3f}</td></tr>"
        for c, m in result["cross_seed"].items()
    )
    seeds = cfg["seeds"]
    labels = [f"{cfg['corpus']} s{seeds[i]} vs {SELF} s{seeds[1 - i]}" for i in range(2)]
    labels += [f"same-seed check: {cfg['corpus']} s{s} vs {SELF} s{s}" for s in seeds]
    rows += "".join(
        f"<tr><td>{html.escape(label)}</td><td>{m['shared_feature_ratio']:.4f}</td><td>{m['top1_ratio']:.4f}</td>"
        f"<td>{m['mean_matched_cosine']:.3f}</td></tr>"
        for label, m in zip(labels, result["cross_corpus"] + result["same_seed_check"], strict=True)
    )
    same = max(m["shared_feature_ratio"] for m in result["same_seed_check"])
    across = max(m["shared_feature_ratio"] for m in [*result["cross_seed"].values(), *result["cross_corpus"]])
    warning = (
        "<p class='note'><b>Undertrained:</b> SAEs that share a seed but not their data share "
        f"{same:.0%} of their features, more than any pair of different seeds ({across:.0%}): their decoders "
        "are still close to the random initialisation, so the shared feature ratios say little. Train longer "
        "(preset paper or more tokens).</p>"
        if same > across + 0.1
        else ""
    )
    data_rows = "".join(
        f"<tr><td>{html.escape(r['trained_on'])}</td><td>{html.escape(r['evaluated_on'])}</td>"
        f"<td>{r['explained_variance']:.3f}</td><td>{r['explained_variance_faithfulsae']:.3f}</td>"
        f"<td>{r['l2_loss']:.4g}</td><td>{r['ce_diff']:.3f}</td></tr>"
        for r in result["cross_data"]
    )
    return (
        f"<h2 id='faithful'>FaithfulSAE: SAEs trained on {html.escape(cfg['corpus'])} vs on the model's own text</h2>"
        f"<p class='note'>{html.escape(result['model'])} {html.escape(result['hook'])}; per corpus "
        f"{cfg['train_tokens']} training tokens, {cfg['train']['epochs']} epochs, TopK d_sae {cfg['train']['d_sae']}"
        f" k {cfg['train']['k']}, seeds {cfg['seeds']}; preset {html.escape(result['preset'])}.</p>"
        "<table><tr><th>pair</th><th>shared feature ratio</th><th>top-1 ratio</th><th>mean matched cosine</th>"
        f"</tr>{rows}</table>{warning}<h3>Cross-data (seed {cfg['seeds'][0]} SAEs, held-out text)</h3>"
        "<table><tr><th>trained on</th><th>evaluated on</th><th>explained variance</th>"
        "<th>EV (FaithfulSAE)</th><th>L2 loss</th><th>CE diff</th></tr>"
        f"{data_rows}</table>"
    )


# ---------------------------------------------------------------------------------------------- demo, CLI
def demo_faithful(ctx, saes: list, out_dir: Path, force: bool = False) -> Path:
    """The study at the demo's hook with the run's preset when the study has it (else "demo")."""
    preset = ctx.preset if ctx.preset in PRESETS else "demo"
    start = time.time()
    run_faithful(ctx.host, ctx.hook, faithful_config(preset, corpus=ctx.corpus), out_dir, preset, force)
    print(f"faithful study ({preset}): {Path(out_dir) / RESULT_FILE} in {time.time() - start:.0f}s")
    return Path(out_dir) / RESULT_FILE


def _register_demo_study() -> None:
    from saeval import demo

    if demo_faithful not in demo.PAIR_STUDIES:
        demo.PAIR_STUDIES.append(demo_faithful)


_register_demo_study()


def faithful(
    model: Annotated[str, typer.Option("--model", help="LM name or folder")] = "smollm2-135m",
    hook: Annotated[str, typer.Option("--hook")] = "blocks.15.hook_resid_post",
    corpus: Annotated[str, typer.Option("--corpus", help="human corpus to compare with the model's own text")] = "sotu",
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("out/faithful"),
    preset: Annotated[str, typer.Option("--preset", help="paper | demo | tiny")] = "paper",
    force: Annotated[bool, typer.Option(help="recompute a finished study")] = False,
) -> None:
    """FaithfulSAE: train SAEs on a corpus and on the model's own text; shared features and cross-data scores."""
    from rich.console import Console

    from saeval.hosts import LanguageHost

    console = Console(stderr=True)
    try:
        config = faithful_config(preset, corpus=corpus)
        result = run_faithful(LanguageHost.load(model), hook, config, out, preset, force)
    except SaevalError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from err
    for c, m in result["cross_seed"].items():
        console.print(f"{c}: shared feature ratio across seeds {m['shared_feature_ratio']:.4f}")
    console.print(f"wrote {out / RESULT_FILE}")
