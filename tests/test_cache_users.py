"""The caches built on saeval.data.cache: erasure activations and probes, self-generated text, the faithful
study's SAEs. Damage is reported in one line and rebuilt, orphans are cleaned, concurrent builders share one
entry, an interrupted self-generation resumes where it stopped."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from saeval.analysis import erasure
from saeval.analysis.erasure import ExampleActivations, ProbeSpec, activations_key, fit_probes, probes_key
from saeval.analysis.probes import ProbeConfig
from saeval.data import cache, selfgen
from saeval.data.cache import lookup

FORK = multiprocessing.get_context("fork")  # a spawned interpreter would spend seconds importing torch
HOOK = "blocks.1.hook_resid_post"
TEXTS = ["the cat sat on the mat", "a dog ran far away", "tax policy and trade", "rain fell all night long",
         "she sold sea shells", "trains leave at noon"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    fresh = tmp_path / "cache"
    monkeypatch.setenv("SAEVAL_CACHE", str(fresh))
    return fresh


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------------------- erasure activations
def counted(host, monkeypatch) -> list[int]:
    calls: list[int] = []
    capture = host.capture
    monkeypatch.setattr(host, "capture", lambda *a, **k: calls.append(1) or capture(*a, **k))
    return calls


@pytest.mark.parametrize("damage", ["truncate index", "garbage shard"])
def test_damaged_activation_entry_is_reported_and_rebuilt(tiny_host, monkeypatch, capsys, damage):
    calls = counted(tiny_host, monkeypatch)
    clean = ExampleActivations.build(tiny_host, HOOK, TEXTS, 8, batch_size=2, shard_tokens=12)
    assert len(clean.shards) > 1
    want_xbar, want_acts = clean.xbar_ED.clone(), [clean.acts_of(e).clone() for e in range(len(clean))]
    first = len(calls)
    if damage == "truncate index":
        target = clean.folder / "index.safetensors"
        size = target.stat().st_size
        os.truncate(target, size // 2)
        why = f"size {size // 2} != {size}"
    else:  # same size, NaN bytes inside the tensor: a readable safetensors file that only the checksum catches
        target = clean.shards[1][0]
        data = bytearray(target.read_bytes())
        data[-32:] = b"\xff" * 32
        target.write_bytes(bytes(data))
        why = "checksum mismatch"
    lines(capsys)
    again = ExampleActivations.build(tiny_host, HOOK, TEXTS, 8, batch_size=2, shard_tokens=12)
    assert lines(capsys) == [f"cache: {target} is damaged ({why}); rebuilding"]
    assert len(calls) == 2 * first and again.folder == clean.folder and lookup(again.folder) == again.folder
    assert torch.isfinite(again.xbar_ED).all() and torch.equal(again.xbar_ED, want_xbar)
    for e in range(len(again)):
        got = again.acts_of(e)
        assert torch.isfinite(got).all() and torch.equal(got, want_acts[e])
    ExampleActivations.build(tiny_host, HOOK, TEXTS, 8)
    assert len(calls) == 2 * first and not lines(capsys)  # sound again: reused without a word


class FakeHost:
    """What ExampleActivations.build needs, without a model: activations are the token ids times 1..D; each
    forward appends a line to ``marker`` (O_APPEND: one line per forward, whichever process ran it)."""

    name, d_model, bos_id, pad_id = "fake", 4, 1, 0

    def __init__(self, marker: Path, pause: float = 0.0):
        self.marker, self.pause = marker, pause

    def fingerprint(self) -> str:
        return "fake-erasure-host"

    def hook(self, name: str) -> str:
        return name

    def tokenizer(self, texts, add_special_tokens=False):
        return {"input_ids": [[2 + ord(c) % 50 for c in text] for text in texts]}

    def capture(self, tokens, hooks, attention_mask_BL=None):
        with open(self.marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(self.pause)
        return {hooks[0]: tokens.float()[..., None] * torch.arange(1, self.d_model + 1)}

    def ordinary_mask(self, tokens, attention_mask_BL=None):
        mask = tokens > 1
        return mask if attention_mask_BL is None else mask & attention_mask_BL.bool()


def forwards(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def _race(marker: Path, barrier) -> None:
    barrier.wait(timeout=10)
    acts = ExampleActivations.build(FakeHost(marker, pause=0.3), HOOK, TEXTS, 8, batch_size=64)
    ok = torch.equal(acts.acts_of(0)[:, 0], acts.tokens_of(0).float())
    os._exit(0 if ok and len(acts) == len(TEXTS) else 3)


def test_two_processes_building_the_same_activations_end_with_one_entry(tmp_path):
    marker = tmp_path / "forwards"
    barrier = FORK.Barrier(2)
    procs = [FORK.Process(target=_race, args=(marker, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert forwards(marker) == 1  # one batch, run once: the second process waited and reused the entry
    key = activations_key(FakeHost(marker), HOOK, TEXTS, 8, None)
    assert lookup(key) == key.path and not temps(key.path.parent)
    assert [p.name for p in key.path.parent.iterdir() if p.is_dir()] == [key.digest]


def test_orphan_temps_are_cleaned_when_the_cache_is_next_written(tmp_path):
    week = time.time() - 7 * 24 * 3600
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    acts_dir, probes_dir = (tmp_path / "cache" / kind for kind in (erasure.ACTS_KIND, erasure.PROBES_KIND))
    for folder in (acts_dir, probes_dir):
        folder.mkdir(parents=True)
    killed = acts_dir / f".0123456789abcdef.{cache._HOST}.{gone.pid}.x1y2.tmp"  # a killed builder's folder
    killed.mkdir()
    (killed / "shard_0000.safetensors").write_bytes(b"half")
    old_file = probes_dir / ".0123456789abcdef.json.k3j4.tmp"  # an atomic writer's temp: no pid, judged by age
    old_file.write_text('{"format": 1, "va')
    os.utime(old_file, (week, week))
    acts = ExampleActivations.build(FakeHost(tmp_path / "forwards"), HOOK, TEXTS, 8)
    assert not temps(acts_dir)
    specs = [ProbeSpec(name="p", train_pos=[0, 1, 2], train_neg=[3, 4, 5], sel_pos=[0], sel_neg=[3])]
    fit_probes(acts, specs, ProbeConfig(epochs=1), 0)
    assert not temps(probes_dir) and len(list(probes_dir.glob("*.json"))) == 1


# ------------------------------------------------------------------------------------------------ probes
def probe_world(tmp_path):
    rng = np.random.default_rng(0)
    examples = [(torch.tensor(rng.normal(size=(3, 8)) + (i % 2), dtype=torch.float32), torch.arange(3))
                for i in range(40)]
    acts = ExampleActivations.from_examples(tmp_path / "acts", examples, 12)
    ids = np.arange(40)
    specs = [ProbeSpec(name=name, train_pos=ids[1:30:2].tolist(), train_neg=ids[0:30:2].tolist(),
                       sel_pos=ids[31::2].tolist(), sel_neg=ids[30::2].tolist()) for name in ("a", "b")]
    return acts, specs


def test_a_probe_record_cut_in_half_is_reported_and_retrained(tmp_path, monkeypatch, capsys):
    acts, specs = probe_world(tmp_path)
    config = ProbeConfig(epochs=3, lr=1e-2)
    fits: list[int] = []
    train = erasure.train_probe
    monkeypatch.setattr(erasure, "train_probe", lambda *a, **k: fits.append(1) or train(*a, **k))
    first = fit_probes(acts, specs, config, 0)
    path = probes_key(acts, specs, config, 0).path.with_suffix(".json")
    assert len(fits) == 2 and path.stat().st_mode & 0o777 == 0o644
    cached = fit_probes(acts, specs, config, 0)
    assert len(fits) == 2  # from the record, weights bit for bit
    assert all(torch.equal(cached[n][0].w_D, first[n][0].w_D) and cached[n][0].b == first[n][0].b
               and cached[n][1] == first[n][1] for n in first)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    lines(capsys)
    again = fit_probes(acts, specs, config, 0)  # no --force needed, no bare JSONDecodeError
    assert lines(capsys) == [f"cache: {path} is damaged (unreadable: JSONDecodeError); removing it"]
    assert len(fits) == 4 and all(torch.equal(again[n][0].w_D, first[n][0].w_D) for n in first)
    fit_probes(acts, specs, config, 0)
    assert len(fits) == 4 and not lines(capsys)  # rewritten whole


# ---------------------------------------------------------------------------------------- self-generated text
class GenHost:
    """What generate_documents needs: seeded random tokens, a few rows ending early at the special token 0."""

    name, bos_id = "fake-gen", 1
    special_ids = torch.tensor([0, 1])

    def __init__(self, kill_at: int | None = None):
        self.kill_at, self.seeds = kill_at, []

    def fingerprint(self) -> str:
        return "fake-gen-weights"

    def sample_unconditional(self, batch_size, max_new_tokens, temperature, seed, stop_ids):
        if self.kill_at is not None and seed == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-generation, no cleanup handler runs
        self.seeds.append(seed)
        gen = torch.Generator().manual_seed(seed)
        out = torch.randint(2, 100, (batch_size, max_new_tokens), generator=gen)
        out[0, max_new_tokens // 2] = 0
        return [selfgen._cut(row, stop_ids).tolist() for row in out]


def _generate_until_killed(n_tokens: int, kill_at: int) -> None:
    selfgen.generate_documents(GenHost(kill_at), n_tokens, sample_len=10, batch_size=4, seed=3)


def test_selfgen_resumes_after_a_kill_and_keeps_no_pickle(tmp_path, monkeypatch):
    n_tokens, n_batches, killed_after = 300, 9, 4  # 4 rows of 10 tokens, one cut to 5: 35 tokens a batch
    base = 3 * 1_000_003
    old = os.umask(0o077)
    try:
        proc = FORK.Process(target=_generate_until_killed, args=(n_tokens, base + killed_after))
        proc.start()
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL
        host = GenHost()
        docs = selfgen.generate_documents(host, n_tokens, sample_len=10, batch_size=4, seed=3)
    finally:
        os.umask(old)
    assert host.seeds == [base + b for b in range(killed_after, n_batches)]  # resumed at batch N
    assert sum(map(len, docs)) >= n_tokens and len(docs) == 4 * n_batches
    folder = tmp_path / "cache" / "selfgen"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert len([p for p in files if p.suffix == ".json"]) == n_batches and not temps(folder)
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o644, path
        assert path.read_bytes()[:1] == b"{" and json.loads(path.read_text())["value"]["docs"]  # JSON, no pickle
    # The same tokens as one uninterrupted run, and a rerun reads them all.
    monkeypatch.setenv("SAEVAL_CACHE", str(tmp_path / "clean"))
    clean = selfgen.generate_documents(GenHost(), n_tokens, sample_len=10, batch_size=4, seed=3)
    assert [d.tolist() for d in docs] == [d.tolist() for d in clean]
    assert all(d.dtype == torch.int32 for d in docs) and 5 in {len(d) for d in docs}  # cut at the special token
    rerun = GenHost()
    assert [d.tolist() for d in selfgen.generate_documents(rerun, n_tokens, sample_len=10, batch_size=4,
                                                           seed=3)] == [d.tolist() for d in clean]
    assert rerun.seeds == []
