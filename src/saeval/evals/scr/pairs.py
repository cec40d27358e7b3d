"""What SCR and SHIFT share: per (dataset, class pair) the examples, activations, probes and clean
accuracies (``PairSetup``), and per SAE on one pair the attributions, rankings and ablation view (``PairSAE``).

SAEBench's probes per pair: c2 (second attribute, e.g. gender), c1 (first, e.g. profession) and the biased
probe trained on the perfectly correlated set (male professors vs female nurses).

Mode "saebench" follows SAEBench's random draws: each group shuffled by np.random.default_rng(data_seed) as
get_spurious_corr_data shuffles it, then per seed one torch stream over the datasets and pairs in order, drawing
what run_eval_single_dataset draws: it trains six probes per pair (also the three reversed ones, e.g. female vs
male, whose draws move the stream on), then draws the negatives of every accuracy it measures. SCR's groups are
equal in size, so those draws only order the training rows; their number (N values included) places the next
pair's probes in the stream.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from saeval.analysis.erasure import (
    AblationView,
    ExampleActivations,
    ProbeSpec,
    ablation_view,
    accuracy_of,
    attribution,
    cached_activations,
    check_erasure_config,
    decoder_rows,
    fit_probes,
    sae_pass,
    saebench_top_n,
    split_validation,
    stream_spec,
    stream_train,
    top_n,
    xy,
)
from saeval.analysis.probes import LinearProbe, ProbeFit, SAEBenchStream, generator
from saeval.data.labeled import ErasureTask, LabeledDataset, load_labeled, scr_task
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.scr.config import TOP_EXAMPLES, PairConfig

PROBES = ("c2", "c1", "biased")  # SAEBench: "male / female", "professor / nurse", "male_professor / female_nurse"
# SAEBench's six activation keys in its order: "male / female", "female_data_only", "professor / nurse", ...
GROUPS = tuple(f"{p}_{side}" for p in PROBES for side in ("pos", "neg"))


@dataclass
class PairSetup:
    """One (dataset, pair): its examples, activations, and per seed the probes and their fits."""

    ds: LabeledDataset | None
    task: ErasureTask
    acts: ExampleActivations
    probes: dict[int, dict[str, tuple[LinearProbe, ProbeFit]]]
    clean: dict[int, dict[tuple[str, str], float]]  # (probe, data group) -> test accuracy
    seconds: float
    saebench: bool = False  # SAEBench's top-N selection and float32 accuracies

    def test_rows(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.task.test[f"{group}_pos"]), np.asarray(self.task.test[f"{group}_neg"])

    def chosen_direction(self, s: int) -> int | None:
        """SAEBench: dir1 (ablate c2, measure c1) when the biased probe is worse on c1 data than on c2 data."""
        on_c1, on_c2 = self.clean[s][("biased", "c1")], self.clean[s][("biased", "c2")]
        return 1 if on_c1 < on_c2 else 2 if on_c1 > on_c2 else None


def pair_specs(task: ErasureTask, seed: int, mode: str, fraction: float) -> list[ProbeSpec]:
    """Mode validation's specs (mode saebench draws them from SAEBench's stream: ``pair_probes``)."""
    if mode == "saebench":
        raise SaevalError("mode saebench draws its probes from SAEBench's stream; use pair_probes")
    specs = []
    for name in PROBES:
        pos, neg = np.asarray(task.train[f"{name}_pos"]), np.asarray(task.train[f"{name}_neg"])
        fit_pos, val_pos = split_validation(pos, fraction, generator("scr", seed, name, "val+"))
        fit_neg, val_neg = split_validation(neg, fraction, generator("scr", seed, name, "val-"))
        specs.append(ProbeSpec(name=name, train_pos=fit_pos.tolist(), train_neg=fit_neg.tolist(),
                               sel_pos=val_pos.tolist(), sel_neg=val_neg.tolist()))
    return specs


def saebench_order(task: ErasureTask, seed: int) -> ErasureTask:
    """The groups in SAEBench's order: get_spurious_corr_data shuffles the six, in its key order, with one
    np.random.default_rng(random_seed) per split."""
    splits = []
    for groups in (task.train, task.test):
        rng = np.random.default_rng(seed)
        shuffled = {}
        for g in GROUPS:
            ids = list(groups[g])
            rng.shuffle(ids)
            shuffled[g] = ids
        splits.append(shuffled)
    return dataclasses.replace(task, train=splits[0], test=splits[1])


def pair_probes(task: ErasureTask, acts: ExampleActivations, config: PairConfig, seed: int,
                stream: SAEBenchStream | None = None) -> dict[str, tuple[LinearProbe, ProbeFit]]:
    """One seed's probes on one pair: validation specs, or SAEBench's draws continuing ``stream`` (a fresh one if
    None) in run_eval_single_dataset's order (``task`` already in ``saebench_order``)."""
    if config.mode != "saebench":
        return fit_probes(acts, pair_specs(task, seed, config.mode, config.validation_fraction), config.probe, seed)
    stream = stream or SAEBenchStream(seed)
    train, test = ({g: np.asarray(v) for g, v in split.items()} for split in (task.train, task.test))

    def draw(split: dict[str, np.ndarray], group: str):
        name, side = group.rsplit("_", 1)
        return stream.paired(split[group], split[f"{name}_{'neg' if side == 'pos' else 'pos'}"])

    out = {}
    for group in GROUPS:  # train_probe_on_activations trains a probe per key, the reversed ones too
        name, side = group.rsplit("_", 1)
        tr, sel = draw(train, group), draw(test, group)
        spec = stream_spec(stream, name if side == "pos" else f"{name}_reversed", tr, sel)
        trained = stream_train(stream, spec, acts.d_model, config.probe,
                               lambda sp: fit_probes(acts, [sp], config.probe, seed)[sp.name], needed=side == "pos")
        if side == "pos":
            assert trained is not None
            out[name] = trained
    measured = [f"{p}_pos" for p in PROBES]
    for group in measured * 2:  # get_probe_test_accuracy, then its get_scr_probe_test_accuracy
        draw(test, group)
    for group in measured:  # get_all_node_effects_for_one_sae
        draw(train, group)
    for _ in range(len(PROBES) * len(config.n_values)):  # perform_feature_ablations
        for group in measured * 2:
            draw(test, group)
    return out


def pair_list(ds: LabeledDataset, config: PairConfig) -> list[tuple[Any, Any]]:
    if config.pairs is None or ds.name not in config.pairs:
        if not ds.scr_pairs:
            raise SaevalError(f"dataset {ds.name} has no attribute pairs; SCR and SHIFT need two attributes")
        return ds.scr_pairs
    return [(ds.class_attr.value_of(a), ds.class_attr.value_of(b)) for a, b in config.pairs[ds.name]]


def pair_setups(ctx: EvalContext, config: PairConfig) -> list[PairSetup]:
    out = []
    # SAEBench seeds once per SAE and its stream runs on through the datasets and pairs.
    streams = {s: SAEBenchStream(s) for s in config.seeds} if config.mode == "saebench" else {}
    for dataset in config.datasets:
        key = ("labeled", dataset, config.data_seed)
        if key not in ctx.memo:
            ctx.memo[key] = load_labeled(dataset, config.data_seed)
        ds = ctx.memo[key]
        for pair in pair_list(ds, config):
            # In mode saebench a pair's probes depend on where the stream stands, and how far the pair moves it
            # on depends on the number of N values (its ablations draw from it).
            skey = ("pair-setup", dataset, pair, config.train_set_size, config.test_set_size, config.ctx_len,
                    config.mode, config.validation_fraction, tuple(config.seeds), config.probe.model_dump_json(),
                    config.sink_ratio, config.data_seed, len(config.n_values) if streams else None,
                    tuple(st.state() for st in streams.values()))
            if skey not in ctx.memo:
                setup = build_setup(ctx, ds, pair, config, streams)
                ctx.memo[skey] = (setup, {s: st.state() for s, st in streams.items()})
            setup, after = ctx.memo[skey]
            for s, st in streams.items():
                st.restore(after[s])
            out.append(setup)
    return out


def build_setup(ctx: EvalContext, ds: LabeledDataset, pair: tuple[Any, Any], config: PairConfig,
                streams: dict[int, SAEBenchStream] | None = None) -> PairSetup:
    start = time.time()
    task = scr_task(ds, pair, config.train_set_size, config.test_set_size)
    if config.mode == "saebench":
        task = saebench_order(task, config.data_seed)
    acts = cached_activations(ctx, task, config.ctx_len, config.llm_batch_size, config.sink_ratio)
    probes = {s: pair_probes(task, acts, config, s, (streams or {}).get(s)) for s in config.seeds}
    return make_setup(ds, task, acts, probes, time.time() - start, saebench=config.mode == "saebench")


def make_setup(ds: LabeledDataset | None, task: ErasureTask, acts: ExampleActivations,
               probes: dict[int, dict[str, tuple[LinearProbe, ProbeFit]]], seconds: float = 0.0,
               saebench: bool = False) -> PairSetup:
    """Clean test accuracy of every probe on every group's test data (SAEBench get_probe_test_accuracy)."""
    clean: dict[int, dict[tuple[str, str], float]] = {}
    for s in probes:
        clean[s] = {}
        for p in PROBES:
            for g in PROBES:
                pos, neg = np.asarray(task.test[f"{g}_pos"]), np.asarray(task.test[f"{g}_neg"])
                clean[s][(p, g)] = probes[s][p][0].accuracy(*xy(acts, pos, neg), float32=saebench)
    return PairSetup(ds, task, acts, probes, clean, seconds, saebench)


@dataclass
class PairSAE:
    """One SAE on one PairSetup: attributions, ranked latents, the ablation view and evidence examples."""

    effects: dict[tuple[int, str], torch.Tensor]  # (seed, probe) -> effect per latent
    ranked: dict[tuple[int, str], torch.Tensor]  # (seed, probe) -> top n_max latents
    view: AblationView
    top_vals_MF: torch.Tensor
    top_ids_MF: torch.Tensor
    n_max: int
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    chosen: dict[tuple[int, str, int], torch.Tensor] = field(default_factory=dict)  # saebench: topk per N

    def ablated(self, s: int, probe: str, n: int) -> torch.Tensor:
        """The latents SCR ablates for (seed, probe, N): SAEBench's topk set, else the ranking's first n."""
        return self.chosen[(s, probe, n)] if self.chosen else self.ranked[(s, probe)][:n]


def pair_sae(ctx: EvalContext, sae, setup: PairSetup, n_max: int, padding_quirk: bool,
             n_values: tuple[int, ...] = ()) -> PairSAE:
    """Encode the pair's cached tokens once per SAE (memoised across SCR and SHIFT in one run); with
    ``n_values`` on a saebench setup, also SAEBench's topk set per N."""
    key = ("pair-sae", id(sae), sae.name, id(setup), padding_quirk)
    cached = ctx.memo.get(key)
    wanted = set(n_values) if setup.saebench else set()
    if cached is not None and cached.n_max >= n_max and wanted <= {n for _, _, n in cached.chosen}:
        return cached
    start = time.time()
    task, acts = setup.task, setup.acts
    rows_FD = decoder_rows(sae).cpu()
    train_ids = np.unique(np.concatenate([np.asarray(v) for v in task.train.values()]))
    sets = [np.asarray(task.train[f"{p}_{side}"]) for p in PROBES for side in ("pos", "neg")]
    first = sae_pass(sae, acts, train_ids, sets=sets, top_m=TOP_EXAMPLES)
    assert first.means_SF is not None and first.top_vals_MF is not None and first.top_ids_MF is not None
    effects, ranked, chosen = {}, {}, {}
    for s, probes in setup.probes.items():
        for k, p in enumerate(PROBES):
            effects[(s, p)] = attribution(first.means_SF[2 * k], first.means_SF[2 * k + 1],
                                          rows_FD @ probes[p][0].w_D, "scr")
            ranked[(s, p)] = top_n(effects[(s, p)], n_max)
            for n in wanted:
                chosen[(s, p, n)] = saebench_top_n(effects[(s, p)], n)
    test_ids = np.unique(np.concatenate([np.asarray(v) for v in task.test.values()]))
    keep = torch.unique(torch.cat([*ranked.values(), *chosen.values()]))
    view = ablation_view(sae, acts, test_ids, keep, padding_quirk)
    out = PairSAE(effects, ranked, view, first.top_vals_MF, first.top_ids_MF, n_max, time.time() - start,
                  chosen=chosen)
    ctx.memo[key] = out
    return out


def probe_accuracy(setup: PairSetup, view: AblationView, s: int, probe: str, group: str,
                   latents: torch.Tensor) -> float:
    pos, neg = setup.test_rows(group)
    logits = view.logits(setup.probes[s][probe][0], setup.acts.xbar_ED, np.concatenate([pos, neg]), latents)
    return accuracy_of(logits, len(pos), setup.saebench)


def normalized_gain(changed: float, original: float, oracle: float) -> float:
    """SAEBench's SCR score with its guard: 0 when the oracle is not at least 0.001 above the biased probe."""
    if oracle - original < 0.001:
        return 0.0
    return (changed - original) / (oracle - original)


def sanity(setup: PairSetup) -> dict[str, Any]:
    """Is the pair a real two-attribute task? Oracles clearly above chance, biased probe unequal on the two."""
    per_seed = []
    for s, acc in setup.clean.items():
        per_seed.append({"seed": s, "oracle_c1": acc[("c1", "c1")], "oracle_c2": acc[("c2", "c2")],
                         "biased_on_biased": acc[("biased", "biased")], "biased_on_c1": acc[("biased", "c1")],
                         "biased_on_c2": acc[("biased", "c2")], "chosen_direction": setup.chosen_direction(s)})
    first = per_seed[0]
    return {"per_seed": per_seed,
            "oracles_above_chance": bool(min(first["oracle_c1"], first["oracle_c2"]) > 0.6),
            "biased_accuracies_differ": bool(abs(first["biased_on_c1"] - first["biased_on_c2"]) > 0.02)}


def check_pair_config(config: PairConfig, sae) -> None:
    check_erasure_config(config, sae, "two-attribute dataset")
