"""Labeled datasets: SAEBench's sampling on local fixtures of the hub schemas, and the offline sets."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from saeval import hub
from saeval.data.labeled import AMAZON, BIAS_IN_BIOS, load_labeled, sample_rows, scr_task, tpp_task
from saeval.errors import SaevalError
from saeval.evals.scr import SPEC as SCR
from saeval.evals.shift import SPEC as SHIFT
from saeval.evals.tpp import SPEC as TPP


def bios_frame(seed: int, per_cell: int, split: str) -> pd.DataFrame:
    """Bias-in-Bios schema: hard_text, profession (int code), gender (0 male, 1 female)."""
    rng = np.random.default_rng(seed)
    rows = []
    for profession in (0, 1, 2, 6, 9, 13, 21, 4):
        for gender in (0, 1):
            n = per_cell + int(rng.integers(0, 3))
            rows += [{"hard_text": f"{split} p{profession} g{gender} #{i}", "profession": profession,
                      "gender": gender} for i in range(n)]
    order = rng.permutation(len(rows))
    return pd.DataFrame([rows[i] for i in order])


@pytest.fixture
def bios_dir(tmp_path):
    bios_frame(0, 12, "train").to_parquet(tmp_path / "train.parquet")
    bios_frame(1, 6, "test").to_parquet(tmp_path / "test.parquet")
    return tmp_path


def test_bias_in_bios_tpp_matches_saebench_sampling(bios_dir):
    ds = load_labeled(f"{BIAS_IN_BIOS}={bios_dir}")
    task = tpp_task(ds, train_set_size=40, test_set_size=20, seed=42)
    assert list(task.train) == ["0", "1", "2", "6", "9"]  # SAEBench's chosen classes
    train = pd.read_parquet(bios_dir / "train.parquet")
    for cls, ids in task.train.items():
        texts = [task.texts[i] for i in ids]
        # pandas: per gender (sorted), group.sample(n=train_set_size // 4, random_state=seed).
        expected = []
        for _, group in train[train.profession == int(cls)].groupby("gender"):
            expected += group.sample(n=10, random_state=42).hard_text.tolist()
        assert texts == expected
    assert {len(v) for v in task.test.values()} == {10}
    assert not set(task.texts[i] for v in task.train.values() for i in v) & set(
        task.texts[i] for v in task.test.values() for i in v)


def test_sample_rows_is_pandas_sample():
    frame = pd.DataFrame({"x": np.arange(57)})
    assert sample_rows(57, 9, seed=3) == frame.sample(n=9, random_state=3).index.tolist()


def test_bias_in_bios_scr_groups_are_saebench_quadrants(bios_dir):
    ds = load_labeled(f"{BIAS_IN_BIOS}={bios_dir}")
    task = scr_task(ds, ds.scr_pairs[0], train_set_size=20, test_set_size=8)  # professor / nurse
    assert task.labels == {"c2": "male / female", "c1": "professor / nurse",
                           "biased": "male_professor / female_nurse"}
    attrs = {}
    for text in task.texts:
        _, p, g, _ = text.split()
        attrs[text] = (int(p[1:]), int(g[1:]))
    m = 5
    expect = {"c2_pos": {(21, 0): m, (13, 0): m}, "c2_neg": {(21, 1): m, (13, 1): m},
              "c1_pos": {(21, 0): m, (21, 1): m}, "c1_neg": {(13, 0): m, (13, 1): m},
              "biased_pos": {(21, 0): 2 * m}, "biased_neg": {(13, 1): 2 * m}}
    for group, counts in expect.items():
        got: dict = {}
        for i in task.train[group]:
            key = attrs[task.texts[i]]
            got[key] = got.get(key, 0) + 1
        assert got == counts, group
    # Rows shared by several groups are one example (one forward pass).
    assert len(task.texts) == len({t for t in task.texts})


def test_amazon_jsonl_and_named_pairs(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        lines = [json.dumps({"text": f"{split} review {c} {r} {i}", "category": c, "rating": r})
                 for c in (1, 2, 3, 5, 6, 24, 26) for r in (1.0, 5.0) for i in range(n + int(rng.integers(0, 2)))]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines))
    ds = load_labeled(f"{AMAZON}={tmp_path}")
    assert ds.scr_pairs[0] == (24, 26)  # Books / CDs_and_Vinyl
    task = scr_task(ds, ds.scr_pairs[0], train_set_size=8, test_set_size=4)
    assert task.labels["c2"] == "1 star / 5 stars" and task.labels["c1"] == "Books / CDs_and_Vinyl"
    assert all(" 24 1.0 " in task.texts[i] for i in task.train["biased_pos"])


def test_bad_labeled_data_is_a_clear_error(tmp_path, bios_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    bios_frame(0, 3, "train").drop(columns=["gender"]).to_parquet(bad / "train.parquet")
    bios_frame(1, 3, "test").drop(columns=["gender"]).to_parquet(bad / "test.parquet")
    with pytest.raises(SaevalError, match="lacks column"):
        load_labeled(f"{BIAS_IN_BIOS}={bad}")
    ds = load_labeled(f"{BIAS_IN_BIOS}={bios_dir}")
    with pytest.raises(SaevalError, match="fewer than"):
        tpp_task(ds, train_set_size=400, test_set_size=20, seed=0)
    with pytest.raises(SaevalError, match="quadrant"):
        scr_task(ds, ds.scr_pairs[0], train_set_size=400, test_set_size=8)
    with pytest.raises(SaevalError, match="unknown labeled dataset"):
        load_labeled("imdb")
    with pytest.raises(SaevalError, match="no train"):
        load_labeled(f"{AMAZON}={tmp_path / 'nowhere'}")


def test_offline_sets_are_real_and_split_cleanly():
    wordnet = load_labeled("wordnet")
    assert wordnet.tpp_classes == ["noun.animal", "noun.plant", "noun.food", "noun.artifact", "noun.person"]
    lemma_category = dict(zip(wordnet.train.columns["lemma"], wordnet.train.columns["category"], strict=True))
    assert lemma_category.get("dog", "noun.animal") == "noun.animal"
    assert not set(wordnet.train.texts) & set(wordnet.test.texts)
    sotu = load_labeled("sotu")
    train_speeches, test_speeches = set(sotu.train.columns["speech"]), set(sotu.test.columns["speech"])
    assert not train_speeches & test_speeches  # whole speeches go to one side
    for table in (sotu.train, sotu.test):
        for era, year in zip(table.columns["era"], table.columns["year"], strict=True):
            assert (era == "early") == (year < 1913)
        assert set(table.columns["party"]) == {"Republican", "Democratic"}
    task = scr_task(sotu, sotu.scr_pairs[0], 80, 40)
    assert task.labels["c2"] == "before 1913 / from 1913" and len(task.train["biased_pos"]) == 40


# ------------------------------------------------------------------------------- preflight (no model loaded)
def test_preflight_offline_names_the_flags_of_the_offline_sets(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "datasets_installed", lambda: True)
    for spec, offline in ((TPP, "wordnet"), (SCR, "sotu"), (SHIFT, "sotu")):
        start = time.time()
        with pytest.raises(SaevalError) as err:
            spec.preflight(spec.config())  # the paper defaults name the hub datasets
        assert time.time() - start < 1.0
        message = str(err.value)
        assert "\n" not in message and "HF_HUB_OFFLINE=1" in message and BIAS_IN_BIOS in message
        assert f"--set {spec.name}.datasets='[\"{offline}\"]' (offline)" in message
        assert f"--set {spec.name}.datasets='[\"{BIAS_IN_BIOS}=FOLDER\"]'" in message
    TPP.preflight(TPP.config(datasets=["wordnet"]))
    SCR.preflight(SCR.config(datasets=["sotu", "wordnet-pos"]))
    SHIFT.preflight(SHIFT.config("tiny"))


def test_preflight_asks_the_hub_once_and_accepts_local_folders(monkeypatch, bios_dir):
    for var in hub.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(hub, "datasets_installed", lambda: True)
    asked = []
    monkeypatch.setattr(hub, "_connects", lambda host, port: asked.append((host, port)) or False)
    monkeypatch.setattr(hub, "_via_proxy", lambda host, scheme: None)
    with pytest.raises(SaevalError, match=f"{AMAZON} from the Hugging Face hub, but huggingface.co:443 did not"):
        TPP.preflight(TPP.config(datasets=[f"{BIAS_IN_BIOS}={bios_dir}", AMAZON]))
    assert asked == [("huggingface.co", 443)]  # a local folder needs no hub
    TPP.preflight(TPP.config(datasets=[f"{BIAS_IN_BIOS}={bios_dir}"]))
    monkeypatch.setattr(hub, "_connects", lambda host, port: True)
    TPP.preflight(TPP.config())
    monkeypatch.setattr(hub, "datasets_installed", lambda: False)
    with pytest.raises(SaevalError, match=r"""needs the datasets package .*--set tpp.datasets='\["wordnet"\]'"""):
        TPP.preflight(TPP.config(datasets=[f"{BIAS_IN_BIOS}={bios_dir}"]))


def test_preflight_refuses_unknown_sets_and_missing_folders(tmp_path):
    with pytest.raises(SaevalError, match="unknown labeled dataset 'imdb'"):
        TPP.preflight(TPP.config(datasets=["imdb"]))
    with pytest.raises(SaevalError, match="does not exist"):
        SCR.preflight(SCR.config(datasets=[f"{AMAZON}={tmp_path / 'nowhere'}"]))


def test_hub_reachability_is_cached_and_bounded(monkeypatch):
    for var in hub.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setattr(hub, "_via_proxy", lambda host, scheme: None)
    hub._connects.cache_clear()
    start = time.time()
    assert "127.0.0.1:9 did not answer" in hub.unreachable_reason()
    assert time.time() - start < hub.TIMEOUT_S + 0.5
    assert hub._connects.cache_info().currsize == 1
    hub.unreachable_reason()
    assert hub._connects.cache_info().hits == 1
    hub._connects.cache_clear()
