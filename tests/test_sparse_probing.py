"""Sparse probing: planted and dead SAEs on synthetic activations, agreement with an independent sklearn/NumPy
computation, SAEBench's sampling on local fixtures of the hub sets, the eval on the tiny host, light config and
offline preflight."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import saeval.evals.sparse_probing.run as sp
from saeval import hub
from saeval.analysis.erasure import ExampleActivations
from saeval.data.budget import size_policy
from saeval.data.labeled import ErasureTask
from saeval.data.probing_sets import email_text, load_probing, probing_task
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.sparse_probing import SPEC
from saeval.evals.sparse_probing.config import AG_NEWS, AMAZON_SENTIMENT, BIAS_IN_BIOS_2, EUROPARL, GITHUB_CODE
from saeval.evals.sparse_probing.report import report
from saeval.saes.base import SAEConfig, create_sae
from tests.cold_cache import private_cache  # noqa: F401 (autouse: a cold cache per test)

D, CTX = 16, 12


# ----------------------------------------------------------------------------------- synthetic world
def world(tmp_path, n_classes=2, n_train=40, n_test=30, scale=0.35, seed=0):
    """Per example, ordinary-token activations = its class's mean + noise; a task with one group per class."""
    rng = np.random.default_rng(seed)
    mu_CD = rng.normal(size=(n_classes, D)) * scale
    examples, labels = [], []
    train, test = {str(c): [] for c in range(n_classes)}, {str(c): [] for c in range(n_classes)}
    for split, n in ((train, n_train), (test, n_test)):
        for c in range(n_classes):
            for _ in range(n):
                split[str(c)].append(len(examples))
                t = int(rng.integers(2, CTX - 1))
                acts = mu_CD[c] + rng.normal(scale=1.0, size=(t, D))
                examples.append((torch.tensor(acts, dtype=torch.float32), torch.arange(t)))
                labels.append(c)
    acts = ExampleActivations.from_examples(tmp_path / "acts", examples, CTX)
    task = ErasureTask("synthetic:probing", [f"text {i}" for i in range(len(examples))], train, test,
                       {str(c): f"class{c}" for c in range(n_classes)}, {"dataset": "synthetic"})
    return task, acts, examples, mu_CD


def relu_sae(W_enc_DF, b_enc_F, name="planted"):
    d_sae = W_enc_DF.shape[1]
    sae = create_sae(SAEConfig(architecture="relu", d_in=D, d_sae=d_sae, name=name))
    with torch.no_grad():
        sae.W_enc.copy_(torch.as_tensor(W_enc_DF, dtype=torch.float32))
        sae.b_enc.copy_(torch.as_tensor(b_enc_F, dtype=torch.float32))
        sae.W_dec.copy_(torch.as_tensor(W_enc_DF.T, dtype=torch.float32))
    return sae


def planted_sae(mu_CD, seed=1, d_sae=48):
    """Random latents plus latent 7 = relu(u . x - midpoint), u the exact class-difference direction."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D, d_sae)) * 0.3
    b = rng.normal(size=d_sae) * 0.3
    u = (mu_CD[1] - mu_CD[0]) / np.linalg.norm(mu_CD[1] - mu_CD[0])
    W[:, 7] = u
    b[7] = -u @ (mu_CD[0] + mu_CD[1]) / 2
    return relu_sae(W, b)


def test_planted_latent_matches_the_raw_probe_and_a_dead_sae_gets_chance(tmp_path):
    task, acts, _, mu_CD = world(tmp_path)
    config = SPEC.config("tiny", mode="validation", full_width_probe="sklearn")
    llm = sp.probe_features(acts.xbar_ED.numpy(), task, config, "llm")
    planted = sp.probe_dataset(planted_sae(mu_CD), task, acts, config, llm)
    m = planted["metrics"]
    assert 0.75 < m["llm_test_accuracy"] < 1.0  # not a trivial task
    assert m["sae_top_1_test_accuracy"] >= m["llm_test_accuracy"] - 0.05
    assert m["sae_top_1_test_accuracy"] > m["llm_top_1_test_accuracy"] + 0.05  # one latent beats one raw dim
    assert all(row[0][0] == 7 for row in planted["top_latents"].values())  # the planted latent ranks first
    dead = sp.probe_dataset(relu_sae(np.zeros((D, 48)), np.zeros(48), "dead"), task, acts, config, llm)
    for key in ("sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy", "sae_top_5_test_accuracy"):
        assert dead["metrics"][key] == 0.5, key  # balanced test sets, constant predictions
    assert dead["metrics"]["llm_test_accuracy"] == m["llm_test_accuracy"]  # the model side is shared


def np_pooled(examples, sae):
    W, b, b_dec = (t.detach().double().numpy() for t in (sae.W_enc, sae.b_enc, sae.b_dec))
    xbar = np.stack([a.double().numpy().mean(0) for a, _ in examples])
    fbar = np.stack([np.maximum((a.double().numpy() - b_dec) @ W + b, 0).mean(0) for a, _ in examples])
    return xbar, fbar


def np_probe(X, sets, k, C=1.0):
    """SAEBench get_top_k_mean_diff_mask + train_sklearn_probe, written out on float64 pooled inputs."""
    pos, neg = X[sets.train_pos], X[sets.train_neg]
    if k is not None:
        keep = np.argsort(-np.abs(pos.mean(0) - neg.mean(0)), kind="stable")[:k]
        X, pos, neg = X[:, keep], pos[:, keep], neg[:, keep]
    model = LogisticRegression(C=C, max_iter=1000).fit(np.r_[pos, neg].astype(np.float32),
                                                       np.r_[np.ones(len(pos)), np.zeros(len(neg))])
    x_test = np.r_[X[sets.test_pos], X[sets.test_neg]].astype(np.float32)
    return float((model.predict(x_test) == np.r_[np.ones(len(sets.test_pos)), np.zeros(len(sets.test_neg))]).mean())


@pytest.mark.parametrize("mode", ["saebench", "validation"])
def test_metrics_equal_an_independent_sklearn_computation(tmp_path, mode):
    task, acts, examples, mu_CD = world(tmp_path, n_classes=3, scale=0.5)
    sae = planted_sae(mu_CD[:2], d_sae=40)
    config = SPEC.config("tiny", mode=mode, full_width_probe="sklearn", k_values=[1, 2, 5, 12])
    out = sp.probe_dataset(sae, task, acts, config)
    xbar, fbar = np_pooled(examples, sae)
    expected = {}
    for cls, label in task.labels.items():
        row = {}
        for side, X in (("llm", xbar), ("sae", fbar)):
            row[f"{side}_test_accuracy"] = np_probe(X, sp.draw_sets(task, cls, side, config), None)
            for k in config.k_values:
                sets = sp.draw_sets(task, cls, f"{side}_top_{k}", config)
                row[f"{side}_top_{k}_test_accuracy"] = np_probe(X, sets, k)
        expected[label] = row
    assert set(out["per_class"]) == set(expected)
    for label, row in expected.items():
        assert out["per_class"][label] == pytest.approx(row, abs=1e-12), label
    assert out["metrics"] == pytest.approx({k: np.mean([r[k] for r in expected.values()]) for k in expected["class0"]})
    # Mode validation draws each class's negatives once; saebench draws them anew for every probe.
    a, b = sp.draw_sets(task, "0", "sae", config), sp.draw_sets(task, "0", "llm_top_2", config)
    assert np.array_equal(a.train_pos, b.train_pos)
    assert np.array_equal(a.train_neg, b.train_neg) == (mode == "validation")
    assert len(a.train_neg) == len(a.train_pos) and not set(a.train_neg) & set(task.train["0"])


def test_full_width_torch_probe_reports_its_best_test_epoch_in_saebench_mode(tmp_path):
    task, acts, _, mu_CD = world(tmp_path)
    out = sp.probe_dataset(planted_sae(mu_CD), task, acts, SPEC.config("tiny"))
    for side in ("llm", "sae"):
        for label, fit in out["full_width_fits"][side].items():
            assert fit["probe"] == "torch" and fit["n_selection"] == 2 * len(task.test["0"])
            assert out["per_class"][label][f"{side}_test_accuracy"] == fit["selection_accuracy"]
    valid = sp.probe_dataset(planted_sae(mu_CD), task, acts, SPEC.config("tiny", mode="validation"))
    assert {f["n_train"] + f["n_selection"] for f in valid["full_width_fits"]["sae"].values()} == {80}


def test_summary_averages_classes_then_datasets_and_keeps_other_k_apart():
    metrics, by_k = sp.summarize({"a": {"sae_top_1_test_accuracy": 0.6, "sae_top_3_test_accuracy": 0.8},
                                  "b": {"sae_top_1_test_accuracy": 1.0, "sae_top_3_test_accuracy": 0.9}})
    assert metrics == {"sae_top_1_test_accuracy": pytest.approx(0.8)}
    assert by_k == {"sae_top_3_test_accuracy": pytest.approx(0.85)}
    assert sp.class_means({"x": {"k": 0.5}, "y": {"k": 1.0}}) == {"k": 0.75}


# ------------------------------------------------------------------------------- the eval, tiny host
def random_topk_sae(d_in, d_sae=96, seed=0):
    torch.manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=8, name=f"topk-{seed}"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.1)
    return sae


def test_eval_on_the_tiny_host_caches_and_shares_activations_with_tpp(tiny_host, monkeypatch):
    import saeval.evals.tpp.run as tpp
    from saeval.evals.tpp import SPEC as TPP

    hook = "blocks.1.hook_resid_post"
    ctx = EvalContext(host=tiny_host, hook=hook, preset="tiny")
    config = SPEC.config("tiny")
    threads = torch.get_num_threads()
    first = sp.run(ctx, random_topk_sae(tiny_host.d_model, seed=1), config)
    assert torch.get_num_threads() == threads  # the probes' single thread is given back
    m = first.metrics
    for key in ("llm_test_accuracy", "llm_top_1_test_accuracy", "llm_top_5_test_accuracy", "sae_test_accuracy",
                "sae_top_1_test_accuracy", "sae_top_2_test_accuracy", "sae_top_5_test_accuracy"):
        assert 0.0 <= getattr(m, key) <= 1.0, key
    assert m.sae_top_10_test_accuracy is None and m.llm_top_100_test_accuracy is None  # k not asked
    detail = first.details.datasets["wordnet"]
    assert set(detail["per_class"]) == {"animal", "plant", "food", "artifact", "person"}
    assert detail["task"]["train_per_class"] == 20 and len(detail["top_latents"]["food"]) == 10
    json.loads(first.model_dump_json())

    forwards, llm_fits = [], []
    capture, features = tiny_host.capture, sp.probe_features
    monkeypatch.setattr(tiny_host, "capture", lambda *a, **k: forwards.append(1) or capture(*a, **k))
    monkeypatch.setattr(sp, "probe_features", lambda X, t, c, side: (llm_fits.append(side), features(X, t, c, side))[1])
    fresh = EvalContext(host=tiny_host, hook=hook, preset="tiny")  # a new run: the disk caches answer
    second = sp.run(fresh, random_topk_sae(tiny_host.d_model, seed=2), config)
    again = sp.run(fresh, random_topk_sae(tiny_host.d_model, seed=1), config)
    assert not forwards and llm_fits == ["sae", "sae"]
    assert second.metrics.llm_test_accuracy == first.metrics.llm_test_accuracy
    assert again.metrics == first.metrics  # deterministic
    _, tpp_acts = tpp.prepare(fresh, "wordnet", TPP.config("tiny"))  # TPP's tiny wordnet: the same entry
    assert tpp_acts.key == detail["activation_cache"] and not forwards
    html = report([json.loads(first.model_dump_json()), json.loads(second.model_dump_json())])
    assert "Sparse probing" in html and "wordnet" in html


def test_bad_k_is_a_clear_error(tiny_host):
    ctx = EvalContext(host=tiny_host, hook="blocks.1.hook_resid_post", preset="tiny")
    with pytest.raises(SaevalError, match=r"k_values \[1, 200\] must lie in 1..64"):
        sp.run(ctx, random_topk_sae(tiny_host.d_model), SPEC.config("tiny", k_values=[1, 200]))


# ------------------------------------------------------------------------------ datasets and sampling
def test_offline_sets_are_real_binary_or_multiclass_tasks():
    spam = load_probing("spam-assassin", 42, 400, 160)
    assert spam.tpp_classes == ["spam", "ham"] and not set(spam.train.texts) & set(spam.test.texts)
    assert all(t.startswith("Subject: ") and "Received:" not in t[:300] for t in spam.train.texts[:50])
    era = load_probing("sotu-era", 42, 400, 160)
    assert not set(era.train.texts) & set(era.test.texts)  # a passage repeated across speeches is dropped
    task = probing_task(era, 400, 160, 42)
    assert set(task.train) == {"early", "late"}
    party = dict(zip(era.train.texts, era.train.columns["party"], strict=True))
    for ids in task.train.values():  # each era balanced over the parties
        assert [party[task.texts[i]] for i in ids].count("Republican") == 100
    moby = load_probing("moby-dick-vs-sotu", 42, 400, 160)
    assert set(moby.train.columns["source"]) == {"moby-dick", "sotu"}
    assert not set(moby.train.texts) & set(moby.test.texts)
    with pytest.raises(SaevalError, match="asked for 4000 examples per class but spam-assassin train split has only"):
        probing_task(spam, 8000, 160, 42)  # outside a runner (or --strict): an error
    with size_policy() as log:  # in a runner: cut to the smallest class, recorded
        task = probing_task(spam, 8000, 160, 42)
    assert len(task.train["spam"]) == len(task.train["ham"]) < 4000 and log.warnings


def test_email_text_keeps_subject_and_body():
    raw = ("From: a@b.c\nReceived: from x by y\nSubject: Cheap pills\nContent-Type: text/html\n\n"
           "<html><body><p>Buy &amp; save</p></body></html>\n")
    assert email_text(raw) == "Subject: Cheap pills Buy & save"


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))


def test_hub_loaders_follow_saebench_on_local_files(tmp_path):
    rng = np.random.default_rng(0)
    news = tmp_path / "news"
    news.mkdir()
    for split, n in (("train", 14), ("test", 8)):
        write_jsonl(news / f"{split}.jsonl", [{"text": f"{split} news {c} {i}", "label": c}
                                              for i in range(n) for c in range(4)])
    ds = load_probing(f"{AG_NEWS}={news}", 42, 20, 8)
    task = probing_task(ds, 20, 8, 42)
    train = pd.read_json(news / "train.jsonl", lines=True)
    for c in range(4):  # SAEBench gather_dataset_from_df: class_df.sample(n=train_set_size // 2, random_state)
        expected = train[train.label == c].text.sample(n=10, random_state=42).tolist()
        assert [task.texts[i] for i in task.train[str(c)]] == expected

    amazon = tmp_path / "amazon"
    amazon.mkdir()
    for split, n in (("train", 10), ("test", 4)):
        write_jsonl(amazon / f"{split}.jsonl", [{"text": f"{split} r{c} {r} {i}", "category": c, "rating": r}
                                                for c in (1, 2) for r in (1.0, 5.0) for i in range(n)])
    sentiment = probing_task(load_probing(f"{AMAZON_SENTIMENT}={amazon}", 42, 16, 8), 16, 8, 42)
    assert set(sentiment.train) == {"1.0", "5.0"} and all(f" {1.0} " in sentiment.texts[i]
                                                         for i in sentiment.train["1.0"])
    assert sentiment.labels == {"1.0": "1 star", "5.0": "5 stars"}

    pairs = tmp_path / "europarl"
    pairs.mkdir()
    for pair in ("en-fr", "fr-it", "de-en", "es-fr", "nl-pt"):
        a, b = pair.split("-")
        write_jsonl(pairs / f"{pair}.jsonl", [{"translation": {a: f"{a} {pair} {i}", b: f"{b} {pair} {i}"}}
                                              for i in range(30)])
    euro = load_probing(f"{EUROPARL}={pairs}", 7, 20, 10)
    random.seed(7)  # SAEBench get_europarl_dataset: the first 16 of each pair's stream, shuffled in turn
    for lang, pair in (("en", "en-fr"), ("fr", "fr-it"), ("de", "de-en"), ("es", "es-fr"), ("nl", "nl-pt")):
        texts = [f"{lang} {pair} {i}" for i in range(16)]
        random.shuffle(texts)
        assert euro.train.texts[[i for i, v in enumerate(euro.train.columns["language"]) if v == lang][0]] == texts[0]
        assert [t for t, v in zip(euro.test.texts, euro.test.columns["language"], strict=True) if v == lang] == \
            texts[10:15]

    code = tmp_path / "code"
    code.mkdir()
    langs = ["C", "Python", "HTML", "Java", "PHP", "Rust"]
    # Odd rows are too short to keep (SAEBench: at most 150 + 384 characters).
    write_jsonl(code / "train.jsonl", [{"code": f"{lang}{i} " + "x" * (100 if i % 2 else int(rng.integers(540, 900))),
                                        "language": lang} for i in range(20) for lang in langs])
    gh = load_probing(f"{GITHUB_CODE}={code}", 42, 8, 4)
    assert gh.tpp_classes == langs[:5] and all(len(t) > 384 for t in gh.train.texts)
    assert not any(t.startswith(("C", "Python")) for t in gh.train.texts)  # the first 150 characters are skipped
    with pytest.raises(SaevalError, match="fewer than the"):
        load_probing(f"{GITHUB_CODE}={code}", 42, 40, 20)


def test_bias_in_bios_sets_take_saebench_classes(tmp_path):
    rows = [{"hard_text": f"{s} p{p} g{g} {i}", "profession": p, "gender": g} for s in ("x",)
            for p in (11, 13, 14, 18, 19, 0) for g in (0, 1) for i in range(6)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows).assign(hard_text=lambda f: "t" + f.hard_text).to_parquet(tmp_path / "test.parquet")
    task = probing_task(load_probing(f"{BIAS_IN_BIOS_2}={tmp_path}", 42, 8, 8), 8, 8, 42)
    assert list(task.train) == ["11", "13", "14", "18", "19"] and task.labels["13"] == "nurse"
    assert task.name == f"{BIAS_IN_BIOS_2}:probing"


# -------------------------------------------------------------------------------- config and preflight
def test_config_imports_no_torch_and_every_field_is_described():
    code = ("import sys; import saeval.evals.sparse_probing; "
            "heavy = [m for m in ('torch', 'numpy', 'transformers', 'sklearn') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    for cls in (SPEC.config_cls, SPEC.result_cls.model_fields["metrics"].annotation,
                SPEC.result_cls.model_fields["details"].annotation, type(SPEC.config().probe)):
        assert all(f.description for f in cls.model_fields.values()), cls
    SPEC.config("demo"), SPEC.config("tiny")
    assert SPEC.config(probe={"epochs": 3}).probe.lr == 1e-2  # a partial override keeps SAEBench's other values
    with pytest.raises(SaevalError, match="sparse_probing.k_values"):
        SPEC.config(k_values=[0])


def test_preflight_offline_gives_the_offline_sets_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "datasets_installed", lambda: True)
    start = time.time()
    with pytest.raises(SaevalError) as err:
        SPEC.preflight(SPEC.config())
    assert time.time() - start < 1.0
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE=1" in message
    assert ("--set sparse_probing.datasets='[\"wordnet\",\"sotu-party\",\"sotu-era\",\"spam-assassin\","
            "\"moby-dick-vs-sotu\"]' (offline)") in message
    offline = json.loads(message.split("--set sparse_probing.datasets='")[1].split("'")[0])
    SPEC.preflight(SPEC.config(datasets=offline))  # the hint passes
    SPEC.preflight(SPEC.config("demo"))
    with pytest.raises(SaevalError, match="unknown dataset 'imdb'"):
        SPEC.preflight(SPEC.config(datasets=["imdb"]))
    with pytest.raises(SaevalError, match="does not exist"):
        SPEC.preflight(SPEC.config(datasets=[f"{AG_NEWS}=/nowhere/at/all"]))
