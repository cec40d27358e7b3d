"""The one cache primitive (saeval.data.cache) and its first users: concurrent builders, damage, stale temp
folders, interrupted builds, content-keyed token caches and the LLM reply cache."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from saeval.data import cache
from saeval.data.activations import ActivationCache, activation_key
from saeval.data.cache import CacheKey, clean_stale, get_or_build, lookup, read_record, write_record
from saeval.data.corpora import corpus_tokens, load_contexts
from saeval.llm import LLMError, OpenAIChatModel
from tests.test_llm import FAST, echo, serve

# Forked, not spawned: a fresh interpreter would spend seconds importing torch before reaching the barrier.
FORK = multiprocessing.get_context("fork")


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def counting_builder(marker: Path, payload: bytes = b"x" * 4096, pause: float = 0.0):
    def build(folder: Path) -> None:
        with open(marker, "a") as fh:  # O_APPEND: one line per build, whichever process ran it
            fh.write(f"{os.getpid()}\n")
        time.sleep(pause)
        (folder / "data.bin").write_bytes(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "meta.json").write_text('{"n": 1}')

    return build


def builds(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def _race(key: CacheKey, marker: Path, barrier) -> None:
    barrier.wait(timeout=10)
    entry = get_or_build(key, counting_builder(marker, pause=0.3))
    os._exit(0 if (entry / "data.bin").read_bytes() == b"x" * 4096 else 3)


def test_two_processes_build_one_entry_once(tmp_path):
    key, marker = CacheKey("race", {"n": 1, "at": str(tmp_path)}), tmp_path / "builds"
    barrier = FORK.Barrier(2)
    procs = [FORK.Process(target=_race, args=(key, marker, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=20)
    assert [p.exitcode for p in procs] == [0, 0]
    assert builds(marker) == 1  # the second waited on the lock, then reused the first one's entry
    assert lookup(key) == key.path and not temps(key.path.parent)
    manifest = json.loads((key.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"data.bin", "sub/meta.json"} and manifest["parts"] == key.parts


def test_modes_are_0644_and_0755_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        entry = get_or_build(tmp_path / "e", counting_builder(tmp_path / "builds"))
    finally:
        os.umask(old)
    assert entry.stat().st_mode & 0o777 == 0o755 and (entry / "sub").stat().st_mode & 0o777 == 0o755
    for name in ("data.bin", "sub/meta.json", "manifest.json"):
        assert (entry / name).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("damage, why", [
    ("overwrite", "checksum mismatch"),
    ("truncate", "size 100 != 4096"),
    ("delete", "missing"),
    ("manifest", "unreadable: JSONDecodeError"),
])
def test_damage_is_reported_in_one_line_and_rebuilt(tmp_path, capsys, damage, why):
    marker, entry = tmp_path / "builds", tmp_path / "entry"
    build = counting_builder(marker)
    get_or_build(entry, build)
    target = entry / ("manifest.json" if damage == "manifest" else "data.bin")
    if damage == "overwrite":  # same size, different bytes: only the checksum can tell
        with open(target, "r+b") as fh:
            fh.seek(1000)
            fh.write(b"garbage!")
        assert get_or_build(entry, build, verify="size") == entry and builds(marker) == 1  # size check: unseen
    elif damage == "truncate":
        os.truncate(target, 100)
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text('{"files": {"data.bin": {"size": 40')  # cut mid-write
    assert get_or_build(entry, build) == entry and builds(marker) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"cache: {target} is damaged ({why}); rebuilding"]
    assert (entry / "data.bin").read_bytes() == b"x" * 4096 and lookup(entry) == entry
    assert get_or_build(entry, build) == entry and builds(marker) == 2  # sound again: reused


class FakeHost:
    """Just what ActivationCache.build needs: activations are the token ids, repeated d_model times."""

    name, d_model = "fake", 8

    def __init__(self):
        self.captures = 0

    def fingerprint(self) -> str:
        return "fake-weights"

    def capture(self, tokens, hooks):
        self.captures += 1
        return {hooks[0]: tokens.float()[..., None].expand(-1, -1, self.d_model)}

    def ordinary_mask(self, tokens):
        return tokens > 0


def test_activation_cache_shard_damage_is_found_and_rebuilt(capsys):
    host, contexts = FakeHost(), torch.arange(1, 1 + 16 * 32).reshape(16, 32)
    cache_ = ActivationCache.build(host, "blocks.0.hook_resid_post", "toy", contexts, batch_size=4, shard_tokens=128)
    first = host.captures
    assert cache_.folder == activation_key(host, "blocks.0.hook_resid_post", contexts).path and len(cache_.shards) == 4
    shard = cache_.shards[1]
    data = bytearray(shard.read_bytes())
    data[-16:] = b"\xff" * 16  # inside the tensor bytes: still a readable safetensors file, with wrong values
    shard.write_bytes(bytes(data))
    again = ActivationCache.build(host, "blocks.0.hook_resid_post", "toy", contexts, batch_size=4, shard_tokens=128)
    assert host.captures == 2 * first  # recomputed
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cache: {shard} is damaged (checksum mismatch); rebuilding"]
    torch.testing.assert_close(again.load_all()[:, 0], contexts.flatten().float())
    ActivationCache.build(host, "blocks.0.hook_resid_post", "toy", contexts)
    assert host.captures == 2 * first  # sound: reused, whatever the shard size asked for
    other = ActivationCache.build(host, "blocks.0.hook_resid_post", "toy", contexts + 1)
    assert other.folder != again.folder  # other tokens, other entry


def test_a_failed_build_leaves_nothing_and_the_next_call_builds(tmp_path):
    key = CacheKey("interrupted", {"at": str(tmp_path)})

    def half_then_fail(folder: Path) -> None:
        (folder / "shard_0000.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_or_build(key, half_then_fail)
    assert not key.path.exists() and not temps(key.path.parent)
    marker = tmp_path / "builds"
    assert get_or_build(key, counting_builder(marker)) == key.path and builds(marker) == 1


def _killed_mid_build(key: CacheKey) -> None:
    def build(folder: Path) -> None:
        (folder / "shard_0000.bin").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup handler runs

    get_or_build(key, build)


def test_a_killed_builder_leaves_a_temp_folder_the_next_build_removes(tmp_path):
    key = CacheKey("killed", {"at": str(tmp_path)})
    proc = FORK.Process(target=_killed_mid_build, args=(key,))
    proc.start()
    proc.join(timeout=20)
    assert proc.exitcode == -signal.SIGKILL and not key.path.exists()
    assert len(temps(key.path.parent)) == 1  # its writer's pid is in the name, and that pid is gone
    marker = tmp_path / "builds"
    get_or_build(key, counting_builder(marker))
    assert builds(marker) == 1 and lookup(key) == key.path and not temps(key.path.parent)


def test_stale_temp_folders_are_cleaned(tmp_path):
    kind = CacheKey("stale", {"at": str(tmp_path)})
    folder = kind.path.parent
    folder.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = folder / f".abc.{cache._HOST}.{gone.pid}.x1y2.tmp"
    old = folder / ".reply.json.k3j4.tmp"  # an atomic writer's temp file: no pid, judged by age
    other_host = folder / f".abc.0000beef.{gone.pid}.z9.tmp"  # another machine's writer: judged by age only
    live = folder / f".abc.{cache._HOST}.{os.getpid()}.q7.tmp"
    for path in (dead, other_host, live):
        path.mkdir()
        (path / "shard").write_bytes(b"1")
    old.write_text("{")
    week = time.time() - 7 * 24 * 3600
    os.utime(old, (week, week))
    get_or_build(kind, counting_builder(tmp_path / "builds"))
    assert temps(folder) == sorted([other_host.name, live.name])
    for path in (other_host, other_host / "shard"):
        os.utime(path, (week, week))
    assert clean_stale(folder) == [other_host] and temps(folder) == [live.name]


def test_edited_corpus_file_at_the_same_path_gives_new_tokens(tmp_path, smollm2_tokenizer):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("The whale surfaced near the ship. " * 40)
    first = corpus_tokens(smollm2_tokenizer, str(corpus))
    assert [d.tolist() for d in corpus_tokens(smollm2_tokenizer, str(corpus))] == [d.tolist() for d in first]
    corpus.write_text("A completely different story about trains and stations. " * 40)
    second = corpus_tokens(smollm2_tokenizer, str(corpus))
    assert second[0].tolist() == smollm2_tokenizer(corpus.read_text(), add_special_tokens=False)["input_ids"]
    assert second[0].tolist() != first[0].tolist()
    host = SimpleNamespace(tokenizer=smollm2_tokenizer, bos_id=smollm2_tokenizer.bos_token_id)
    contexts = load_contexts(host, str(corpus), 64, ctx_len=16)
    assert set(contexts[:, 1:].flatten().tolist()) <= set(second[0].tolist())


def test_records_round_trip_and_damage(capsys):
    key = CacheKey("records", {"prompt": "hi", "seed": 0})
    assert read_record(key) is None
    write_record(key, {"reply": "hello", "score": float("nan")})
    assert read_record(key) == {"reply": "hello", "score": None}  # strict JSON
    path = key.path.with_suffix(".json")
    path.write_text(path.read_text().replace("hello", "jello"))
    assert read_record(key) is None and not path.exists()
    assert capsys.readouterr().err.strip().splitlines() == [f"cache: {path} is damaged (checksum mismatch); "
                                                            "removing it"]


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def test_a_rerun_of_the_same_prompts_makes_no_call(api_key):
    with serve(echo) as server:
        model = OpenAIChatModel("m", server.url + "/cached", **FAST)
        prompts = ["alpha", "beta", "alpha"]
        assert model.complete(prompts) == ["re: alpha", "re: beta", "re: alpha"]
        asked = len(server.seen)
        assert asked == 3
        again = OpenAIChatModel("m", server.url + "/cached", **FAST)  # a new run: a new client object
        assert again.complete(prompts) == ["re: alpha", "re: beta", "re: alpha"] and len(server.seen) == asked
        assert again.complete(["alpha", "gamma"]) == ["re: alpha", "re: gamma"] and len(server.seen) == asked + 1
        again.complete(["alpha"], max_new_tokens=5)  # other sampling settings: another request
        assert len(server.seen) == asked + 2
        OpenAIChatModel("m", server.url + "/cached", cache=False, **FAST).complete(["alpha"])
        assert len(server.seen) == asked + 3


def test_failed_replies_are_not_kept(api_key):
    def flaky(handler, body):
        if len(handler.server.seen) == 1:
            handler.reply(400, {"error": "no"})
        else:
            echo(handler, body)

    with serve(flaky) as server:
        model = OpenAIChatModel("m", server.url, **FAST)
        with pytest.raises(LLMError, match="HTTP 400"):
            model.complete(["once"])
        assert model.complete(["once"]) == ["re: once"] and len(server.seen) == 2
