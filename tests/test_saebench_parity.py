"""Mode "saebench" against SAEBench 0.6.0's own scr_and_tpp code, on the same tiny activations and seed.

SAEBench runs as shipped (run_eval_single_sae and everything below it) with only the model forward replaced:
``get_dataset_activations`` returns our padded activations. saeval runs ``tpp.run`` / ``scr.run`` with only the
data loading replaced. Probes, node effects, top-N sets, clean and ablated accuracies and the final metrics must
agree to 1e-6; the measured maxima are printed (``pytest -s``).

The activations are dyadic (multiples of 1/8, 1, 2, 4 or 8 tokens per example), so SAEBench's float32 sums over
padded positions and saeval's float64 means over ordinary tokens give bit-identical probe inputs; what is left
of float rounding (the attribution means, float32 there and float64 here) is far below 1e-6.

When SAEBench finds the activations and probes an earlier run saved (artifacts: every SAE after the first at a
hook, or a rerun), it skips probe training and its attribution and ablation negatives come from another point of
its stream: TPP's ``saved_probes`` reproduces those runs (SCR's groups are drawn whole, so it is unaffected).

Scope (documented differences, not tested here): SAEBench on a GPU runs the same draws (randperm and nn.Linear's
init use the CPU generator) but GPU arithmetic, and torch.topk on CUDA may pick other latents among tied effects;
with a bfloat16 model SAEBench trains its probes in bfloat16 while saeval keeps float32 activations.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import saeval.evals.scr.pairs as pairs
import saeval.evals.scr.run as scr
import saeval.evals.tpp.run as tpp
from saeval.analysis.erasure import ExampleActivations
from saeval.analysis.probes import ProbeConfig
from saeval.data.labeled import Attribute, ErasureTask, LabeledDataset, LabeledTable, tpp_groups
from saeval.evals.base import EvalContext
from saeval.saes.base import SAEConfig, create_sae

main = pytest.importorskip("sae_bench.evals.scr_and_tpp.main")
import pandas as pd  # noqa: E402  (SAEBench's own dependency, like those below)
from sae_bench.evals.scr_and_tpp import dataset_creation  # noqa: E402
from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig  # noqa: E402
from sae_bench.sae_bench_utils import dataset_info, dataset_utils  # noqa: E402

D, CTX, SEED, TOL = 16, 12, 42, 1e-6
BIB, AMAZON = "LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"
# SAEBench's keys of the SCR groups, in its order, and saeval's names for them.
SCR_KEYS = {"male / female": "c2_pos", "female_data_only": "c2_neg", "professor / nurse": "c1_pos",
            "nurse_data_only": "c1_neg", "male_professor / female_nurse": "biased_pos",
            "female_nurse_data_only": "biased_neg"}
PROBE_KEYS = {"c2": "male / female", "c1": "professor / nurse", "biased": "male_professor / female_nurse"}
# Two trainings: a fixed epoch count (SAEBench's default: patience = epochs, the stream is known without
# training) and early stopping (the stream hangs on every probe's run, the reversed SCR probes' too).
TRAININGS = {"fixed": dict(epochs=4, patience=20), "early-stop": dict(epochs=8, patience=1)}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEVAL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def one_thread():
    """Both sides on one thread: on a busy machine each of the ~10^3 tiny BCE calls otherwise waits ~10 ms for
    torch's second thread (the results are the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Worst:
    """The largest |SAEBench - saeval| per quantity, checked against TOL and printed."""

    def __init__(self, name: str):
        self.name, self.max = name, {}

    def see(self, what: str, ours, theirs) -> None:
        a = np.asarray(torch.as_tensor(ours).double().cpu().numpy(), dtype=np.float64)
        b = np.asarray(torch.as_tensor(theirs).double().cpu().numpy(), dtype=np.float64)
        assert a.shape == b.shape, (what, a.shape, b.shape)
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        self.max[what] = max(self.max.get(what, 0.0), diff)
        assert diff <= TOL, f"{what}: saeval {a} vs SAEBench {b}"

    def report(self) -> None:
        print(f"\n{self.name}: max |saeval - SAEBench| " + ", ".join(f"{k} {v:.1e}" for k, v in self.max.items()))


def topk_sae(seed: int = 0, d_sae: int = 48, k: int = 4):
    torch.manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="topk", d_in=D, d_sae=d_sae, k=k, name=f"parity-{seed}"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.W_dec.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.5)  # encode(0) != 0: SAEBench's padded positions shift the ablated means
        sae.b_enc.normal_(0, 0.3)
    return sae


class SAEBenchSAE:
    """What SAEBench's functions touch of an SAE (encode, decode, W_dec, cfg.hook_*), backed by a saeval SAE."""

    def __init__(self, sae):
        self.sae, self.W_dec = sae, sae.W_dec
        self.cfg = SimpleNamespace(hook_layer=0, hook_name="hook")

    def encode(self, x):
        return self.sae.encode(x)

    def decode(self, f):
        return self.sae.decode(f)


def dyadic_example(rng: np.random.Generator, mean_D: np.ndarray) -> torch.Tensor:
    n = int(rng.choice([1, 2, 4, 8]))
    acts = np.round((mean_D + rng.normal(size=(n, D))) * 8) / 8
    acts[:, 0] += (acts.sum(1) == 0) / 8  # SAEBench takes a token whose activations sum to 0 for padding
    return torch.tensor(acts, dtype=torch.float32)


def padded(examples: list[torch.Tensor]) -> torch.Tensor:
    """SAEBench's input: BOS, the tokens, padding to CTX, activations zeroed at BOS and the pads."""
    X = torch.zeros(len(examples), CTX, D)
    for i, acts in enumerate(examples):
        X[i, 1 : 1 + len(acts)] = acts
    return X


def recorder(monkeypatch, module, name: str) -> list:
    """Replace module.name by a wrapper that logs (args, output) of each call and changes nothing else."""
    log, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        log.append((args, out))
        return out

    monkeypatch.setattr(module, name, wrapper)
    return log


def host():
    return SimpleNamespace(device="cpu", name="tiny")


def saebench_config(perform_scr: bool, n_values: list[int], training: dict, **extra) -> ScrAndTppEvalConfig:
    return ScrAndTppEvalConfig(random_seed=SEED, dataset_names=[BIB, AMAZON], perform_scr=perform_scr,
                               n_values=n_values, context_length=CTX, probe_epochs=training["epochs"],
                               early_stopping_patience=training["patience"], probe_lr=1e-2, sae_batch_size=7,
                               llm_batch_size=4, **extra)


def probe_config(training: dict) -> ProbeConfig:
    return ProbeConfig(lr=1e-2, epochs=training["epochs"], early_stopping_patience=training["patience"])


def run_saebench(monkeypatch, config: ScrAndTppEvalConfig, sae, tmp_path, activations, save: bool = False) -> dict:
    """SAEBench's run_eval_single_sae with its internals logged (fresh unless an earlier run saved artifacts)."""
    monkeypatch.setattr(main, "get_dataset_activations", activations)
    logs = {name: recorder(monkeypatch, main, name) for name in
            ("run_eval_single_dataset", "get_all_node_effects_for_one_sae", "select_top_n_features")}
    results, per_class = main.run_eval_single_sae(config, SAEBenchSAE(sae), None, "cpu", str(tmp_path / "sb"),
                                                  save_activations=save)
    return {"results": results, "per_class": per_class, **logs}


def mask_ids(mask_F: torch.Tensor) -> list[int]:
    return sorted(torch.nonzero(mask_F).flatten().tolist())


# ------------------------------------------------------------------------------------------------- TPP
class TPPWorld:
    """Per dataset: SAEBench's chosen classes, each with its own mean direction; 24 train, 12 test examples."""

    def __init__(self, tmp_path, dataset: str, seed: int, n_train: int = 24, n_test: int = 12):
        rng = np.random.default_rng(seed)
        self.classes = dataset_info.chosen_classes_per_dataset[dataset]
        self.examples, train, test = [], {}, {}
        for c in self.classes:
            mean = rng.normal(size=D)
            for split, n in ((train, n_train), (test, n_test)):
                split[c] = list(range(len(self.examples), len(self.examples) + n))
                self.examples += [dyadic_example(rng, mean) for _ in range(n)]
        self.task = ErasureTask(f"{dataset}:tpp", [f"t{i}" for i in range(len(self.examples))], train, test,
                                {c: f"class {c}" for c in self.classes})
        folder = tmp_path / hashlib.sha256(dataset.encode()).hexdigest()[:8]
        self.acts = ExampleActivations.from_examples(folder, [(a, torch.arange(len(a))) for a in self.examples], CTX)

    def saebench_acts(self):
        return tuple({c: padded([self.examples[i] for i in split[c]]) for c in self.classes}
                     for split in (self.task.train, self.task.test))


@pytest.mark.parametrize("training", list(TRAININGS))
def test_tpp_reproduces_saebench(tmp_path, monkeypatch, training):
    training = TRAININGS[training]
    n_values = [1, 2, 5, 20]
    worlds = {ds: TPPWorld(tmp_path, ds, seed) for ds, seed in ((BIB, 1), (AMAZON, 2))}
    sae = topk_sae()
    sb = run_saebench(monkeypatch, saebench_config(False, n_values, training), sae, tmp_path,
                      lambda dataset_name, *args, **kwargs: worlds[dataset_name].saebench_acts())

    monkeypatch.setattr(tpp, "prepare", lambda ctx, dataset, config: (worlds[dataset].task, worlds[dataset].acts))
    ours = {name: recorder(monkeypatch, tpp, name) for name in ("seed_draws", "saebench_top_n", "tpp_metrics")}
    config = tpp.TPPConfig(datasets=[BIB, AMAZON], n_values=n_values, seeds=[SEED], ctx_len=CTX,
                           probe=probe_config(training))
    assert config.mode == "saebench"
    result = tpp.run(EvalContext(host=host(), hook="hook"), sae, config)

    worst = Worst(f"TPP {training}")
    tie_choices = 0
    for k, ds in enumerate(worlds):
        classes = worlds[ds].classes
        (_, (_, fits)), (_, (raw, clean_sb)) = ours["seed_draws"][k], sb["run_eval_single_dataset"][k]
        (args, effects_sb) = sb["get_all_node_effects_for_one_sae"][k]
        for c in classes:
            worst.see("probe weights", fits[c][0].w_D, args[1][c].net.weight[0])
            worst.see("probe bias", fits[c][0].b, args[1][c].net.bias[0])
        # Per class and N, in SAEBench's order: the effects and the topk set of saeval, the mask of SAEBench.
        tops = ours["saebench_top_n"][k * len(classes) * len(n_values) : (k + 1) * len(classes) * len(n_values)]
        masks = sb["select_top_n_features"][k * len(classes) * len(n_values) :]
        for q, (c, n) in enumerate((c, n) for c in classes for n in n_values):
            (effects, n_ours), chosen = tops[q]
            assert n_ours == n and masks[q][0][1:] == (n, c)
            worst.see("node effects", effects, effects_sb[c])
            assert chosen.tolist() == mask_ids(masks[q][1]), (ds, c, n)
            stable = np.argsort(-effects.double().numpy(), kind="stable")[: len(chosen)]
            tie_choices += set(stable.tolist()) != set(chosen.tolist())
        (clean, ablated, _, _), _ = ours["tpp_metrics"][k]
        for j in classes:
            worst.see("clean accuracy", clean[j], clean_sb[j])
        for i in classes:
            for n in n_values:
                for j in classes:
                    worst.see("ablated accuracy", ablated[(i, n, j)], raw[i][n][j])
        for c in classes:
            for key, value in sb["per_class"][ds][c].items():
                worst.see("per-class metrics", result.details.datasets[ds]["per_class"][f"class {c}"][key], value)
    ours_flat = result.details.per_seed[str(SEED)]
    for key, value in sb["results"].items():
        if not isinstance(value, dict):
            worst.see("final metrics", ours_flat[key], value)
    assert result.metrics.tpp_threshold_2_total_metric == ours_flat["tpp_threshold_2_total_metric"]
    worst.report()
    # Not a vacuous agreement: ablations move accuracies, torch.topk's choice among ties mattered, and in the
    # early-stopping variant some probe stopped early (so the stream went through the trained run).
    assert any(abs(v) > 0.02 for k, v in ours_flat.items() if "total" in k)
    assert tie_choices > 0
    if training["patience"] < training["epochs"]:
        assert any(fit.epochs_run < training["epochs"] for _, (_, fits) in ours["seed_draws"]
                   for _, fit in fits.values())


def test_tpp_saved_probes_reproduce_saebench_runs_that_load_artifacts(tmp_path, monkeypatch):
    n_values = [1, 2, 5, 20]
    worlds = {ds: TPPWorld(tmp_path, ds, seed) for ds, seed in ((BIB, 1), (AMAZON, 2))}
    sae = topk_sae()
    config = saebench_config(False, n_values, TRAININGS["fixed"])
    first = run_saebench(monkeypatch, config, sae, tmp_path, lambda name, *a, **k: worlds[name].saebench_acts(),
                         save=True)
    monkeypatch.setattr(main, "get_dataset_activations", None)  # the second run must load what the first saved
    later = run_saebench(monkeypatch, config, sae, tmp_path, None, save=True)

    monkeypatch.setattr(tpp, "prepare", lambda ctx, dataset, config: (worlds[dataset].task, worlds[dataset].acts))
    ours_config = tpp.TPPConfig(datasets=[BIB, AMAZON], n_values=n_values, seeds=[SEED], ctx_len=CTX,
                                probe=probe_config(TRAININGS["fixed"]))
    worst = Worst("TPP saved probes")
    for saved, theirs in ((False, first), (True, later)):
        metrics = recorder(monkeypatch, tpp, "tpp_metrics")
        result = tpp.run(EvalContext(host=host(), hook="hook"), sae, ours_config, saved_probes=saved)
        for k in range(len(worlds)):
            (clean, ablated, classes, _), _ = metrics[k]
            raw, clean_sb = theirs["run_eval_single_dataset"][k][1]
            for j in classes:
                worst.see("clean accuracy", clean[j], clean_sb[j])
                for i in classes:
                    for n in n_values:
                        worst.see("ablated accuracy", ablated[(i, n, j)], raw[i][n][j])
        for key, value in theirs["results"].items():
            if not isinstance(value, dict):
                worst.see("final metrics", result.details.per_seed[str(SEED)][key], value)
    worst.report()
    assert first["results"] != later["results"]  # SAEBench's two runs of one SAE disagree; each is reproduced


def test_tpp_class_sampling_is_saebench_balanced_dataset():
    """The rows per class (labeled.tpp_groups) are those of SAEBench's get_balanced_dataset, in its order."""
    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame({"hard_text": [f"bio {i}" for i in range(n)], "profession": rng.choice([0, 1, 2, 6, 9, 13], n),
                       "gender": rng.choice([0, 1], n)})
    theirs = dataset_utils.filter_dataset(dataset_utils.get_balanced_dataset(df, "LabHC/bias_in_bios", 9, SEED),
                                          dataset_info.chosen_classes_per_dataset[BIB])
    table = LabeledTable(df["hard_text"].tolist(), {"profession": df["profession"].tolist(),
                                                    "gender": df["gender"].tolist()})
    ds = LabeledDataset("bib", table, table, Attribute("profession", "job"), Attribute("gender", "gender"),
                        [0, 1, 2, 6, 9], [], (0, 1))
    ours = tpp_groups(ds, table, 9, SEED, "train")
    assert list(ours) == list(theirs)
    assert {c: [table.texts[r] for r in rows] for c, rows in ours.items()} == theirs


# ------------------------------------------------------------------------------------------------- SCR
SCR_PAIRS = {BIB: [("professor", "nurse"), ("architect", "journalist")], AMAZON: [("Books", "CDs_and_Vinyl")]}


class SCRWorld:
    """One two-attribute dataset in SAEBench's columns: per pair the four quadrants (a little more than
    SAEBench needs), rows in random table order; each attribute has its own direction, the second louder."""

    def __init__(self, dataset: str, seed: int, m_train: int = 8, m_test: int = 6):
        self.name, self.m = dataset, {"train": m_train, "test": m_test}
        self.meta = dataset_info.dataset_metadata[dataset.split("_class_set")[0]]
        pos2, neg2 = (self.meta["column2_mapping"][v] for v in main.COLUMN2_VALS_LOOKUP[dataset])
        rng = np.random.default_rng(seed)
        dirs = {pair: (rng.normal(size=D), rng.normal(size=D)) for pair in SCR_PAIRS[dataset]}
        self.examples, tables = {}, {}
        for split, m in self.m.items():
            rows = []
            for a_name, b_name in SCR_PAIRS[dataset]:
                a, b = (self.meta["column1_mapping"][x] for x in (a_name, b_name))
                dir1, dir2 = dirs[(a_name, b_name)]
                for c1, c2, count in ((a, pos2, 2 * m + 1), (b, neg2, 2 * m + 1), (b, pos2, m + 1), (a, neg2, m + 1)):
                    mean = (1.0 if c1 == a else -1.0) * dir1 + 2.0 * (1.0 if c2 == pos2 else -1.0) * dir2
                    rows += [(c1, c2, mean)] * count
            rows = [rows[i] for i in rng.permutation(len(rows))]
            texts = [f"{dataset}|{split}|{i}" for i in range(len(rows))]
            self.examples.update({t: dyadic_example(rng, mean) for t, (_, _, mean) in zip(texts, rows, strict=True)})
            tables[split] = pd.DataFrame({self.meta["text_column_name"]: texts,
                                          self.meta["column1_name"]: [r[0] for r in rows],
                                          self.meta["column2_name"]: [r[1] for r in rows]})
        self.tables = tables
        c1_names = {v: k for k, v in self.meta["column1_mapping"].items()}
        c2_names = {v: str(k) for k, v in self.meta["column2_mapping"].items()}
        labeled = {split: LabeledTable(df[self.meta["text_column_name"]].tolist(),
                                       {self.meta["column1_name"]: df[self.meta["column1_name"]].tolist(),
                                        self.meta["column2_name"]: df[self.meta["column2_name"]].tolist()})
                   for split, df in tables.items()}
        self.ds = LabeledDataset(dataset, labeled["train"], labeled["test"],
                                 Attribute(self.meta["column1_name"], "first attribute", c1_names),
                                 Attribute(self.meta["column2_name"], "second attribute", c2_names), [],
                                 [tuple(self.meta["column1_mapping"][x] for x in p) for p in SCR_PAIRS[dataset]],
                                 (pos2, neg2))

    def saebench_groups(self, column1_vals, split: str) -> dict[str, list[str]]:
        """SAEBench get_spurious_corr_data on our table: its six groups, shuffled its way."""
        return dataset_creation.get_spurious_corr_data(
            self.tables[split], column1_vals, main.COLUMN2_VALS_LOOKUP[self.name], self.name.split("_class_set")[0],
            self.m[split], SEED)

    def saebench_acts(self, column1_vals):
        return tuple({key: padded([self.examples[t] for t in texts])
                      for key, texts in self.saebench_groups(column1_vals, split).items()} for split in self.m)


@pytest.mark.parametrize("training", list(TRAININGS))
def test_scr_reproduces_saebench(tmp_path, monkeypatch, training):
    training = TRAININGS[training]
    n_values = [1, 2, 5, 20]
    worlds = {ds: SCRWorld(ds, seed) for ds, seed in ((BIB, 4), (AMAZON, 5))}
    sae = topk_sae(1)
    sb_config = saebench_config(True, n_values, training, column1_vals_lookup=SCR_PAIRS)

    def saebench_activations(dataset_name, config, model, llm_batch_size, layer, hook_point, device, chosen_classes,
                             column1_vals=None, column2_vals=None):
        return worlds[dataset_name].saebench_acts(column1_vals)

    sb = run_saebench(monkeypatch, sb_config, sae, tmp_path, saebench_activations)

    def activations(ctx, task, ctx_len, batch_size, sink_ratio=None):
        world = next(w for w in worlds.values() if task.texts[0] in w.examples)
        folder = tmp_path / hashlib.sha256(task.name.encode()).hexdigest()[:8]
        return ExampleActivations.from_examples(folder, [(world.examples[t], torch.arange(len(world.examples[t])))
                                                         for t in task.texts], ctx_len)

    monkeypatch.setattr(pairs, "load_labeled", lambda spec, seed: worlds[spec].ds)
    monkeypatch.setattr(pairs, "cached_activations", activations)
    ours = {"pair_sae": recorder(monkeypatch, scr, "pair_sae"), "probe_accuracy": recorder(monkeypatch, scr,
                                                                                           "probe_accuracy")}
    config = scr.SCRConfig(datasets=[BIB, AMAZON], train_set_size=4 * 8, test_set_size=4 * 6, n_values=n_values,
                           seeds=[SEED], data_seed=SEED, ctx_len=CTX, probe=probe_config(training))
    assert config.mode == "saebench"
    ctx = EvalContext(host=host(), hook="hook")
    result = scr.run(ctx, sae, config)

    worst = Worst(f"SCR {training}")
    runs = [(ds, pair) for ds in worlds for pair in SCR_PAIRS[ds]]
    assert len(ours["pair_sae"]) == len(sb["run_eval_single_dataset"]) == len(runs)
    for k, (ds, pair) in enumerate(runs):
        (_, _, setup, *_), pair_run = ours["pair_sae"][k]
        (_, (raw, clean_sb)) = sb["run_eval_single_dataset"][k]
        (args, effects_sb) = sb["get_all_node_effects_for_one_sae"][k]
        # The groups in SAEBench's order (np.random.default_rng(seed) shuffles in get_spurious_corr_data).
        for split in ("train", "test"):
            theirs = worlds[ds].saebench_groups(pair, split)
            groups = setup.task.train if split == "train" else setup.task.test
            assert {SCR_KEYS[key]: texts for key, texts in theirs.items()} == \
                   {g: [setup.task.texts[i] for i in ids] for g, ids in groups.items()}
        for p, key in PROBE_KEYS.items():
            probe = setup.probes[SEED][p][0]
            worst.see("probe weights", probe.w_D, args[1][key].net.weight[0])
            worst.see("probe bias", probe.b, args[1][key].net.bias[0])
            worst.see("node effects", pair_run.effects[(SEED, p)], effects_sb[key])
            worst.see("clean accuracy", setup.clean[SEED][(p, p)], clean_sb[key])
            for g, other in PROBE_KEYS.items():
                if g != p:
                    worst.see("clean accuracy", setup.clean[SEED][(p, g)], clean_sb[f"{key} probe on {other} data"])
        masks = sb["select_top_n_features"][k * len(PROBE_KEYS) * len(n_values) :]
        for q, (p, n) in enumerate((p, n) for p in PROBE_KEYS for n in n_values):
            assert masks[q][0][1:] == (n, PROBE_KEYS[p])
            assert pair_run.chosen[(SEED, p, n)].tolist() == mask_ids(masks[q][1]), (ds, pair, p, n)
        # run_pair measures the biased probe: dir1 on c1 data with c2's latents ablated, dir2 the other way.
        calls = ours["probe_accuracy"][k * 2 * len(n_values) : (k + 1) * 2 * len(n_values)]
        for q, (ablated, measured, n) in enumerate((a, m, n) for a, m in (("c2", "c1"), ("c1", "c2"))
                                                   for n in n_values):
            (_, _, s, probe, group, latents), value = calls[q]
            assert (probe, group) == ("biased", measured) and latents is pair_run.chosen[(SEED, ablated, n)]
            worst.see("ablated accuracy", value,
                      raw[PROBE_KEYS[ablated]][n][f"{PROBE_KEYS['biased']} probe on {PROBE_KEYS[measured]} data"])
        theirs = sb["results"][f"{ds}_scr_{pair[0]}_{pair[1]}_results"]
        ours_pair = result.details.pairs[setup.task.name]["results"]
        assert set(ours_pair) == set(theirs)
        for key, value in theirs.items():
            worst.see("per-pair metrics", ours_pair[key], value)
    ours_flat = result.details.per_seed[str(SEED)]
    for key, value in sb["results"].items():
        if not isinstance(value, dict):
            worst.see("final metrics", ours_flat[key], value)
    worst.report()
    assert any(abs(v) > 0.02 for k, v in ours_flat.items() if k.startswith("scr_dir"))
    # The run memo gives SHIFT (or a rerun) the same setups and leaves the streams where each pair left them; a
    # pair's probes hang on the N values of the pairs before it (their ablations draw from the stream).
    again = pairs.pair_setups(ctx, config)
    assert [id(s) for s in again] == [id(args[2]) for args, _ in ours["pair_sae"]]
    fewer = pairs.pair_setups(ctx, config.model_copy(update={"n_values": [2]}))
    assert torch.equal(fewer[0].probes[SEED]["c1"][0].w_D, again[0].probes[SEED]["c1"][0].w_D)
    assert not torch.equal(fewer[1].probes[SEED]["c1"][0].w_D, again[1].probes[SEED]["c1"][0].w_D)


def test_scr_runs_that_load_saebench_artifacts_agree_with_the_first(tmp_path, monkeypatch):
    """Why SCR has no ``saved_probes``: its groups are equal in size, so the draws SAEBench's later runs make
    elsewhere in the stream only reorder whole groups, and the scores stay those of the run that trained."""
    worlds = {ds: SCRWorld(ds, seed) for ds, seed in ((BIB, 4), (AMAZON, 5))}
    config = saebench_config(True, [1, 2, 5, 20], TRAININGS["fixed"], column1_vals_lookup=SCR_PAIRS)

    def activations(dataset_name, config, model, llm_batch_size, layer, hook_point, device, chosen_classes,
                    column1_vals=None, column2_vals=None):
        return worlds[dataset_name].saebench_acts(column1_vals)

    sae = topk_sae(1)
    first = run_saebench(monkeypatch, config, sae, tmp_path, activations, save=True)
    later = run_saebench(monkeypatch, config, sae, tmp_path, None, save=True)  # None: it must load the artifacts
    worst = Worst("SCR saved probes (SAEBench vs itself)")
    for key, value in first["results"].items():
        if not isinstance(value, dict):
            worst.see("final metrics", later["results"][key], value)
    worst.report()
