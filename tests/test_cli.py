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
    assert code == 2 and "no-such-model: no such folder" in text


def test_set_and_config_reach_the_eval_and_a_changed_field_recomputes(tmp_path, tiny_model_dir):
    sae_dir = _sae(tmp_path)
    out = tmp_path / "out"
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'model = "{tiny_model_dir}"\nsaes = ["{sae_dir}"]\nevals = ["core"]\npreset = "tiny"\n'
                   f'out = "{out}"\n[core]\nn_eval_tokens = 256\nn_density_tokens = 512\n')
    code, text = _run("run", "--config", str(cfg), "--set", "core.batch_size=2")
    assert code == 0, text
    path = out / "s1" / "core.json"
    record = json.loads(path.read_text())
    assert record["config"]["n_eval_tokens"] == 256 and record["config"]["batch_size"] == 2
    assert record["config"]["ctx_len"] == 32  # the tiny preset, under the file's and the flag's fields
    mtime = path.stat().st_mtime_ns
    code, text = _run("run", "--config", str(cfg), "--set", "core.batch_size=2")
    assert code == 0 and "up to date" in text and path.stat().st_mtime_ns == mtime
    code, text = _run("run", "--config", str(cfg), "--set", "core.batch_size=4")  # the flag overrides the file
    assert code == 0 and "config.batch_size 2 -> 4" in " ".join(text.split())
    assert json.loads(path.read_text())["config"]["batch_size"] == 4


def test_whole_corpus_when_the_request_is_larger_and_strict_refuses(tmp_path, tiny_model_dir):
    sae_dir = _sae(tmp_path)
    corpus = tmp_path / "small.txt"
    corpus.write_text(" ".join(f"word{i % 97} and more text" for i in range(800)))
    args = ["run", "--model", str(tiny_model_dir), "--sae", str(sae_dir), "--preset", "tiny", "--corpus", str(corpus),
            "--set", "core.n_density_tokens=10000000", "--out", str(tmp_path / "o")]
    code, text = _run(*args)
    assert code == 0, text
    record = json.loads((tmp_path / "o" / "s1" / "core.json").read_text())
    (size,) = [v for k, v in record["sizes"].items() if v["used"] < v["requested"]]
    assert size["requested"] == 10_000_000 // 32 and record["warnings"] and "used all" in record["warnings"][0]
    assert record["details"]["n_density_tokens"] < 10_000_000
    code, text = _run(*args, "--strict", "--force")
    assert code == 1 and "asked for 312500 contexts" in " ".join(text.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens", "0"], "--tokens"),
        (["--tokens", "-5"], "--tokens"),
        (["--set", "core.nope=1"], "core has no field 'nope'; fields: n_eval_tokens"),
        (["--set", "core.n_eval_tokens=-1"], "core.n_eval_tokens: Input should be greater than 0"),
        (["--set", "nosuch.x=1"], "unknown eval 'nosuch'"),
        (["--evals", "core,nosuch"], "unknown eval 'nosuch'; available: autointerp, core,"),
        (["--preset", "huge"], "no preset 'huge'"),
        (["--device", "cuda"], "--device cuda: this torch"),
        (["--device", "banana"], "--device banana: not a torch device"),
        (["--set", "core"], "write NAME.FIELD=VALUE"),
        (["--config", "missing.toml"], "--config missing.toml: no such file"),
    ],
)
def test_bad_flags_fail_in_one_line_before_the_model_loads(tmp_path, args, message):
    sae_dir = _sae(tmp_path)
    code, text = _run("run", "--model", "smollm2-135m", "--sae", str(sae_dir), "--out", str(tmp_path / "o"), *args)
    assert code == 2 and message in " ".join(text.split()), text
    assert "cannot load model" not in text and "Traceback" not in text


def test_unusable_out_fails_first(tmp_path, tiny_model_dir):
    sae_dir = _sae(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, text = _run("run", "--model", str(tiny_model_dir), "--sae", str(sae_dir), "--out", str(blocker))
    assert code == 2 and "exists and is not a folder" in text


def test_help_and_bad_input_import_no_torch():
    import subprocess
    import sys

    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom saeval.cli import app\n"
             "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
             "for cmd in ('run', 'train', 'show', 'case-study', 'faithful', 'report', 'demo'):\n"
             "    assert CliRunner().invoke(app, [cmd, '--help']).exit_code == 0, cmd\n"
             "r = CliRunner().invoke(app, ['run', '--sae', 'nowhere', '--set', 'core.nope=1'])\n"
             "assert r.exit_code == 2 and 'nope' in r.output, r.output\n"
             "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'sentence_transformers') if m in sys.modules]\n"
             "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_show_lists_fields_with_descriptions():
    code, text = _run("show", "core")
    assert code == 0 and "n_eval_tokens" in text and "409600" in text and "8192" in text  # default and demo
    code, text = _run("list", "evals", "--fields")
    assert code == 0 and "tpp" in text and "n_values" in text


def test_a_broken_sae_among_good_ones_is_recorded_and_the_others_run(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    good = _sae(tmp_path, name="good")
    bad = _sae(tmp_path, name="bad")
    weights = load_file(bad / "sae_weights.safetensors")
    weights["W_dec"][0, 0] = float("nan")
    save_file(weights, bad / "sae_weights.safetensors")
    out = tmp_path / "out"
    code, text = _run("run", "--model", str(tiny_model_dir), "--sae", str(good), "--sae", str(bad), "--preset",
                      "tiny", "--out", str(out))
    assert code == 1 and "W_dec has 1 NaN" in " ".join(text.split())
    jobs = {j["sae"]: j for j in json.loads((out / "run_summary.json").read_text())["jobs"]}
    assert jobs["good"]["status"] == "done" and jobs["bad"]["status"] == "failed" and "NaN" in jobs["bad"]["error"]
    assert (out / "good" / "core.json").exists() and not (out / "bad").exists()
    code, text = _run("run", "--model", str(tiny_model_dir), "--sae", str(bad), "--preset", "tiny", "--out", str(out))
    assert code == 2 and "W_dec has 1 NaN" in text  # alone, it is bad input: one line, nothing run


def test_cli_refuses_a_transcoder_in_one_line_before_any_forward(tmp_path, tiny_model_dir, monkeypatch):
    sl = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    from saeval.hosts.lm import LanguageHost

    def no_forward(*_, **__):
        raise AssertionError("the model ran before the transcoder was refused")

    for method in ("forward", "capture"):
        monkeypatch.setattr(LanguageHost, method, no_forward)
    meta = SAEMetadata(model_name="tiny", hook_name="blocks.1.hook_resid_pre", hook_name_out="blocks.1.hook_mlp_out")
    tc = sl.Transcoder(sl.TranscoderConfig(d_in=64, d_out=64, d_sae=128, apply_b_dec_to_input=False, metadata=meta))
    tc.save_model(tmp_path / "tc")
    out = tmp_path / "o"
    code, output = _run("run", "--model", str(tiny_model_dir), "--sae", str(tmp_path / "tc"),
                        "--evals", "steerability", "--preset", "tiny", "--out", str(out))
    text = " ".join(output.split())
    assert code == 2, output
    assert "eval steerability clamps a latent" in text and "run only core on transcoders" in text, text
    assert not out.exists() or not list(out.rglob("*.json"))
