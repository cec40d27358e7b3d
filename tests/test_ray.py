"""The Ray backend on a local Ray instance: same results as the local backend, a killed worker's jobs are
retried with nothing lost or half-written, a deterministic failure is reported once and the rest finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

from saeval.saes import SAEConfig, create_sae  # noqa: E402
from saeval.saes.formats import save_sae  # noqa: E402

TESTS = Path(__file__).parent
HOOKS = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_host):
    root = tmp_path_factory.mktemp("ray")
    tiny_host.model.save_pretrained(root / "model")
    tiny_host.tokenizer.save_pretrained(root / "model")
    saes = []
    for i in range(4):
        torch.manual_seed(i)
        sae = create_sae(SAEConfig(architecture="topk", d_in=64, d_sae=128, k=8, hook_name=HOOKS[i % 2],
                                   name=f"s{i}"))
        with torch.no_grad():
            sae.W_enc.normal_()
        saes.append(str(save_sae(sae, root / f"s{i}")))
    return root, saes


def _saeval(*args, env=None, wait=True):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "SAEVAL_QUIET": "1", **(env or {})}
    cmd = [sys.executable, "-m", "saeval", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def _metrics(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): json.loads(p.read_text())["metrics"] for p in sorted(out.glob("*/*.json"))}


def _close(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    for key in a:
        for name, x in a[key].items():
            y = b[key][name]
            if isinstance(x, float) and isinstance(y, float):
                assert abs(x - y) <= 1e-6 * max(1.0, abs(x)), (key, name, x, y)
            else:
                assert x == y, (key, name, x, y)
    return True


def test_ray_equals_local_on_two_hooks_with_two_evals(setup, tmp_path):
    root, saes = setup
    common = ["run", "--model", str(root / "model"), *sum((["--sae", s] for s in saes), []), "--evals",
              "core,synthetic", "--preset", "tiny", "--set", "synthetic.n_samples=8", "--set", "synthetic.n_fit=64"]
    code, text = _saeval(*common, "--out", str(tmp_path / "local"))
    assert code == 0, text
    code, text = _saeval(*common, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2")
    assert code == 0, text
    local, remote = _metrics(tmp_path / "local"), _metrics(tmp_path / "ray")
    assert len(local) == 8 and _close(local, remote)
    summary = json.loads((tmp_path / "ray" / "run_summary.json").read_text())
    assert summary["backend"] == "ray" and summary["counts"] == {"done": 8}
    code, text = _saeval(*common, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2")
    assert code == 0 and json.loads((tmp_path / "ray" / "run_summary.json").read_text())["counts"] == {"skipped": 8}


def test_a_killed_worker_is_retried_and_nothing_is_lost(setup, tmp_path):
    root, saes = setup
    marks = tmp_path / "marks"
    marks.mkdir()
    args = ["run", "--model", str(root / "model"), *sum((["--sae", s] for s in saes), []), "--evals", "slow",
            "--plugin", "ray_plugin", "--preset", "tiny", "--set", "slow.sleep=2"]
    proc = _saeval(*args, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2",
                   env={"SAEVAL_TEST_MARKS": str(marks)}, wait=False)
    deadline = time.time() + 120
    while not list(marks.iterdir()) and time.time() < deadline:
        time.sleep(0.2)
    victim = int(next(marks.iterdir()).name.split(".")[0])
    os.kill(victim, signal.SIGKILL)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    code, text = _saeval(*args, "--set", "slow.sleep=0", "--out", str(tmp_path / "serial"))
    assert code == 0, text
    ray_m, serial_m = _metrics(tmp_path / "ray"), _metrics(tmp_path / "serial")
    assert len(ray_m) == 4 and _close(ray_m, serial_m)
    pids = {json.loads(p.read_text())["details"]["pid"] for p in (tmp_path / "ray").glob("*/slow.json")}
    assert victim not in pids  # the killed worker's job was redone elsewhere
    leftovers = [p for p in (tmp_path / "ray").rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers


def test_a_deterministic_failure_is_reported_once_and_the_rest_finish(setup, tmp_path):
    root, saes = setup
    bad = create_sae(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4, hook_name=HOOKS[0], name="wrong"))
    bad_dir = save_sae(bad, tmp_path / "wrong")
    code, text = _saeval("run", "--model", str(root / "model"), "--sae", saes[0], "--sae", str(bad_dir),
                         "--sae", saes[1], "--evals", "core", "--preset", "tiny", "--out", str(tmp_path / "o"),
                         "--backend", "ray", "--workers", "2")
    assert code == 1, text
    jobs = json.loads((tmp_path / "o" / "run_summary.json").read_text())["jobs"]
    failed = [j for j in jobs if j["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["sae"] == "wrong" and "d_in=32" in failed[0]["error"]
    assert {j["sae"] for j in jobs if j["status"] == "done"} == {"s0", "s1"}
