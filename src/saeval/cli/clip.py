"""``saeval steer-clip``: steerability of a CLIP vision-tower SAE (the paper's setting: steered image embeddings
read against text embeddings of a vocabulary). Kept apart from the eval module so that importing the CLI stays
light: everything heavy is imported when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saeval.cli.common import one_line_errors


@one_line_errors
def steer_clip(
    sae: Annotated[str, typer.Option(help="SAE folder/file trained on the CLIP vision tower")],
    model: Annotated[str, typer.Option(help="CLIPModel folder or hub id, or open_clip:MODEL[:PRETRAINED]")],
    images: Annotated[str, typer.Option(help="fashion-mnist, photos, an image folder, or hf:NAME[:SPLIT]")] = (
        "fashion-mnist"
    ),
    vocab: Annotated[str, typer.Option(help="'default' (WordNet common words) or a file, one word per line")] = (
        "default"
    ),
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out"),
    hook: Annotated[str | None, typer.Option(help="hook name when the SAE's config lacks one")] = None,
    preset: Annotated[str, typer.Option(help="paper (defaults) or a smaller named preset, e.g. demo")] = "paper",
    device: Annotated[str, typer.Option()] = "cpu",
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[bool, typer.Option(help="recompute results whose config hash matches")] = False,
) -> None:
    """Steerability of a CLIP vision-tower SAE: steered image embeddings against text embeddings of a
    vocabulary (the paper's setting); writes OUT/<sae>/steerability.json."""
    from saeval.runner.plan import check_device, check_out_dir, expand_sae_refs, resolve_evals

    overrides = {"steerability": {"images": images, "vocab": vocab}}
    resolve_evals(["steerability"], preset, overrides)
    (ref,) = expand_sae_refs([sae])
    check_device(device)
    check_out_dir(out)

    from saeval.evals import EvalContext
    from saeval.hosts.clip import CLIPHost
    from saeval.runner import run_evals
    from saeval.runner.execute import check_sae_fits, resolve_hook
    from saeval.saes.formats import load_sae

    loaded = load_sae(ref, device=device)
    host = CLIPHost.load(model, device=device)
    hook_name = resolve_hook(loaded, hook)
    check_sae_fits(host, loaded, hook_name)
    ctx = EvalContext(host=host, hook=hook_name, seed=seed, preset=preset)
    run_evals(ctx, [loaded], ["steerability"], out, force=force, overrides=overrides, sae_paths=[ref])
