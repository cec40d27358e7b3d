"""``saeval case-study`` and ``saeval faithful``: the built-in studies from the command line.

Each writes ``OUT/studies/<study>.json`` (kept on a rerun whose config hash matches). The study's fields come
from its config class (``--preset``, then ``--set FIELD=VALUE``); every check that needs no model runs before
the model loads. Nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from saeval.cli.common import one_line_errors
from saeval.errors import SaevalError

SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="FIELD=VALUE of the study's config, VALUE as JSON or a plain string; nested fields with dots, "
                  "e.g. explain.max_new_tokens=8 (repeatable)")]
PresetOption = Annotated[str, typer.Option("--preset", help="paper (the papers' constants), demo or tiny")]
ModelOption = Annotated[str, typer.Option("--model", help="HF hub id, local HF folder, or smollm2-135m (packaged)")]
CorpusOption = Annotated[str, typer.Option("--corpus", help="sotu, moby-dick, a .txt/.jsonl path, or hf:NAME")]
OutOption = Annotated[Path, typer.Option("--out", help="output folder: the result is OUT/studies/<study>.json")]
SeedOption = Annotated[int, typer.Option("--seed", help="seed of every random choice")]
ForceOption = Annotated[bool, typer.Option("--force", help="recompute a result whose config hash matches")]


def resolve_config(name: str, preset: str, sets: list[str] | None) -> dict[str, Any]:
    """The study's ``--set`` overrides, validated with the preset (one-line error on an unknown preset or field)."""
    from saeval.runner.overrides import parse_sets
    from saeval.studies import get_study

    overrides = parse_sets(sets, min_depth=1)
    get_study(name).config(preset, **overrides)
    return overrides


def _run(name: str, host, saes: list, hook: str, corpus: str, seed: int, preset: str, out: Path,
         overrides: dict[str, Any], force: bool):
    from saeval.evals.base import EvalContext
    from saeval.studies import get_study, run_studies

    ctx = EvalContext(host=host, hook=hook, corpus=corpus, seed=seed, preset=preset)
    path = run_studies(ctx, saes, [name], out, force=force, overrides={name: overrides})[0]
    from saeval.results import read_result

    return path, get_study(name).result_cls.model_validate(read_result(path))


@one_line_errors
def case_study(
    sae: Annotated[list[str] | None, typer.Option(
        "--sae", help="SAE folder/file or SAELens release:id; give two (none: the demo SAEs)")] = None,
    model: ModelOption = "smollm2-135m",
    hook: Annotated[str | None, typer.Option("--hook", help="hook name when an SAE's config lacks one")] = None,
    corpus: CorpusOption = "sotu",
    out: OutOption = Path("out"),
    preset: PresetOption = "paper",
    set_: SetOption = None,
    seed: SeedOption = 0,
    force: ForceOption = False,
) -> None:
    """FaithfulSAE case study: match two SAEs; windows, self-explanations, embedding scores of matched pairs."""
    from saeval.runner.plan import check_model_ref, check_out_dir, expand_sae_refs

    overrides = resolve_config("case_study", preset, set_)
    if sae and len(sae) != 2:
        raise SaevalError(f"give exactly two --sae (got {len(sae)}), or none for the demo SAEs")
    refs = expand_sae_refs(sae) if sae else []
    if sae and len(refs) != 2:
        raise SaevalError(f"the two --sae name {len(refs)} SAEs: give exactly two")
    check_model_ref(model)
    check_out_dir(out)

    from saeval.hosts import LanguageHost
    from saeval.runner.execute import check_sae_fits, resolve_hook

    host = LanguageHost.load(model)
    if refs:
        from saeval.saes.formats import load_sae

        saes = [load_sae(r) for r in refs]
    else:
        from saeval.demo import demo_saes

        saes = demo_saes(host)
    hooks = [resolve_hook(s, hook) for s in saes]
    for s, h in zip(saes, hooks, strict=True):
        check_sae_fits(host, s, h)
    path, result = _run("case_study", host, saes, hooks[0], corpus, seed, preset, out, overrides, force)
    m = result.metrics
    typer.echo(f"{result.saes[0].name} vs {result.saes[1].name}: shared feature ratio {m.shared_feature_ratio:.4f}, "
               f"top-1 ratio {m.top1_ratio:.4f}; {m.n_pairs} pairs in {path}", err=True)


@one_line_errors
def faithful(
    model: ModelOption = "smollm2-135m",
    hook: Annotated[str, typer.Option("--hook", help="hook the SAEs are trained at")] = "blocks.15.hook_resid_post",
    corpus: Annotated[str, typer.Option(
        "--corpus", help="human corpus compared with the model's own text: sotu, moby-dick, a path, hf:NAME")] = "sotu",
    out: OutOption = Path("out"),
    preset: PresetOption = "paper",
    set_: SetOption = None,
    seed: SeedOption = 0,
    force: ForceOption = False,
) -> None:
    """FaithfulSAE: train SAEs on a corpus and on the model's own text; shared features and cross-data scores."""
    from saeval.runner.plan import check_model_ref, check_out_dir
    from saeval.studies.faithful.config import SELF

    overrides = resolve_config("faithful", preset, set_)
    if corpus == SELF:
        raise SaevalError(f"--corpus {SELF}: the study compares the model's own text with another corpus")
    check_model_ref(model)
    check_out_dir(out)

    from saeval.hosts import LanguageHost

    host = LanguageHost.load(model)
    path, result = _run("faithful", host, [], hook, corpus, seed, preset, out, overrides, force)
    m = result.metrics
    typer.echo(f"shared feature ratio across seeds: {corpus} {m.shared_ratio_corpus_seeds:.4f}, {SELF} "
               f"{m.shared_ratio_self_seeds:.4f}; across corpora {m.shared_ratio_across_corpora:.4f}", err=True)
    typer.echo(f"wrote {path}", err=True)
