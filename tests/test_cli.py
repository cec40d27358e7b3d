"""The command line end to end on a tiny saved model: run, resume, report, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from saeval.cli import app
from saeval.saes import SAEConfig, create_sae
from saeval.saes.formats import save_sae

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_host):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_host.model.save_pretrained(folder)
    tiny_host.tokenizer.save_pretrained(folder)
    return folder


def _sae(tmp_path, name="s1", d_in=64, hook="blocks.1.hook_resid_post", arch="topk"):
    sae = create_sae(SAEConfig(architecture=arch, d_in=d_in, d_sae=128, k=8, hook_name=hook, name=name))
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_enc.normal_()
    return save_sae(sae, tmp_path / name)


def _run(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_list_evals():
    code, out = _run("list", "evals")
    assert code == 0 and "core" in out


def test_run_writes_resumes_and_reports(tmp_path, tiny_model_dir):
    sae_dir = _sae(tmp_path)
    out = tmp_path / "out"
    args = ["run", "--model", str(tiny_model_dir), "--sae", str(sae_dir), "--evals", "core", "--preset", "tiny",
            "--out", str(out)]
    code, text = _run(*args)
    assert code == 0, text
    record = json.loads((out / "s1" / "core.json").read_text())
    assert record["sae"]["hook_name"] == "blocks.1.hook_resid_post" and record["preset"] == "tiny"
    assert record["metrics"]["l0"] == pytest.approx(8.0)
    code, text = _run(*args)
    assert code == 0 and "skip s1/core" in text.replace("\n", " ")
    code, text = _run("report", str(out))
    assert code == 0 and (out / "report.html").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hook": "blocks.9.hook_resid_post"}, "valid hooks are"),
        ({"d_in": 32}, "d_in=32 but .* has width 64"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, tiny_model_dir, kwargs, message):
    sae_dir = _sae(tmp_path, **kwargs)
    code, text = _run("run", "--model", str(tiny_model_dir), "--sae", str(sae_dir), "--preset", "tiny",
                      "--out", str(tmp_path / "o"))
    assert code == 2
    import re

    assert re.search(message, " ".join(text.split())), text
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.json"))


def test_corrupt_weights_name_the_file(tmp_path, tiny_model_dir):
    sae_dir = _sae(tmp_path)
    (sae_dir / "sae_weights.safetensors").write_bytes(b"\x00garbage")
    code, text = _run("run", "--model", str(tiny_model_dir), "--sae", str(sae_dir), "--out", str(tmp_path / "o"))
    assert code == 2 and "sae_weights.safetensors" in text


def test_missing_model_is_explained(tmp_path):
    sae_dir = _sae(tmp_path)
    code, text = _run("run", "--model", str(tmp_path / "no-such-model"), "--sae", str(sae_dir), "--out",
                      str(tmp_path / "o"))
    assert code == 2 and "cannot load model" in text
