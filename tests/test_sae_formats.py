"""Loading and saving SAEs in the layouts of SAELens, sparsify, dictionary_learning and Gemma Scope.

Each fixture writes known random weights the way that library writes them; the expected latents and
reconstructions are computed here from that library's formula in plain torch, never through saeval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from saeval.errors import SaevalError
from saeval.saes import SAEConfig, create_sae, load_sae, save_sae, wrap_sae
from tests.helpers import error_of

D, F, K = 16, 64, 5
ATOL = 1e-6


def _weights(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    return {
        "W_enc": r(D, F, scale=0.3),
        "b_enc": r(F, scale=0.1),
        "W_dec": r(F, D, scale=0.3),
        "b_dec": r(D, scale=0.5),
        "threshold": torch.rand(F, generator=g) * 0.8,
        "b_gate": r(F, scale=0.1),
        "r_mag": r(F, scale=0.2),
        "b_mag": r(F, scale=0.1),
    }


@pytest.fixture
def w() -> dict[str, Tensor]:
    return _weights()


@pytest.fixture
def x() -> Tensor:
    return torch.randn(8, D, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- reference formulas (independent of saeval)


def ref_pre(w: dict[str, Tensor], x: Tensor, subtract_b_dec: bool = True, scale: float = 1.0) -> Tensor:
    xs = x * scale
    return ((xs - w["b_dec"]) if subtract_b_dec else xs) @ w["W_enc"] + w["b_enc"]


def ref_decode(w: dict[str, Tensor], f: Tensor, scale: float = 1.0) -> Tensor:
    return (f @ w["W_dec"] + w["b_dec"]) / scale


def ref_topk(post: Tensor, k: int) -> Tensor:
    kth = post.sort(dim=-1, descending=True).values[..., k - 1 : k]
    return post * (post >= kth)


def ref_encode(arch: str, w: dict[str, Tensor], x: Tensor, subtract_b_dec: bool = True, k: int = K) -> Tensor:
    if arch == "gated":
        xc = x - w["b_dec"] if subtract_b_dec else x
        gate = (xc @ w["W_enc"] + w["b_gate"]) > 0
        return torch.relu(xc @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]) * gate
    pre = ref_pre(w, x, subtract_b_dec)
    if arch in ("standard", "relu"):
        return torch.relu(pre)
    if arch == "topk":
        return ref_topk(torch.relu(pre), k)
    return pre * (pre > w["threshold"])  # jumprelu (thresholds are positive)


def assert_matches(sae, w: dict[str, Tensor], x: Tensor, f_ref: Tensor) -> None:
    with torch.no_grad():
        f = sae.encode(x)
        assert torch.allclose(f, f_ref, atol=ATOL), (f - f_ref).abs().max()
        assert torch.allclose(sae.decode(f), ref_decode(w, f_ref), atol=ATOL)


# ---------------------------------------------------------------- writers in each library's layout

SAELENS_KEYS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag"),
}


def write_saelens(folder: Path, arch: str, w: dict[str, Tensor], **cfg_extra) -> Path:
    """sae-lens 6 `save_model` layout (field names read off sae-lens 6.54's SAEConfig.to_dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.54.12",
            "sae_lens_training_version": "6.54.12",
            "model_name": "tiny-model",
            "hook_name": "blocks.2.hook_resid_post",
        },
        "architecture": arch,
    }
    if arch == "topk":
        cfg.update(k=K, rescale_acts_by_decoder_norm=False)
    cfg.update(cfg_extra)
    save_file({k: w[k].contiguous() for k in SAELENS_KEYS[arch]}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_sparsify(folder: Path, w: dict[str, Tensor], **cfg_extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": F,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
        **cfg_extra,
    }
    tensors = {
        "encoder.weight": w["W_enc"].T.contiguous(),
        "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_dictionary_learning(folder: Path, dict_class: str, state: dict[str, Tensor], **trainer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    cfg = {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": D,
            "dict_size": F,
            "layer": 3,
            "lm_name": "tiny-lm",
            "submodule_name": "resid_post_layer_3",
            **trainer,
        },
        "buffer": {"d_submodule": D},
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


# ---------------------------------------------------------------- SAELens


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_saelens_folder_reproduces_outputs(tmp_path, w, x, arch):
    sae = load_sae(write_saelens(tmp_path / f"my-{arch}", arch, w))
    assert_matches(sae, w, x, ref_encode(arch, w, x))
    assert sae.name == f"my-{arch}"
    assert (sae.cfg.hook_name, sae.cfg.model_name) == ("blocks.2.hook_resid_post", "tiny-model")
    assert sae.architecture == {"standard": "relu"}.get(arch, arch)


def test_saelens_file_path_and_no_b_dec_subtraction(tmp_path, w, x):
    folder = write_saelens(tmp_path / "s", "jumprelu", w, apply_b_dec_to_input=False)
    sae = load_sae(folder / "sae_weights.safetensors")
    assert_matches(sae, w, x, ref_encode("jumprelu", w, x, subtract_b_dec=False))


def test_saelens_pre6_layout(tmp_path, w, x):
    # SAELens 5: flat config, hook_point/hook_name and model_name at top level, bool normalize_activations,
    # TopK as activation_fn "topk" with k in activation_fn_kwargs.
    folder = tmp_path / "old"
    folder.mkdir()
    cfg = {
        "architecture": "standard",
        "d_in": D,
        "d_sae": F,
        "model_name": "gpt2-small",
        "hook_point": "blocks.1.hook_resid_pre",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "normalize_activations": False,
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": "3.5.0",
    }
    save_file({k: w[k] for k in SAELENS_KEYS["standard"]}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(folder)
    assert (sae.architecture, sae.cfg.k) == ("topk", K)
    assert (sae.cfg.hook_name, sae.cfg.model_name) == ("blocks.1.hook_resid_pre", "gpt2-small")
    assert_matches(sae, w, x, ref_encode("topk", w, x))

    cfg.pop("activation_fn_str")
    cfg.pop("architecture")  # missing architecture means "standard" in SAELens < 6
    (folder / "cfg.json").write_text(json.dumps({**cfg, "hook_name": "blocks.1.hook_resid_pre"}))
    sae = load_sae(folder)
    assert sae.architecture == "relu"
    assert_matches(sae, w, x, ref_encode("relu", w, x))


def test_saelens_expected_average_with_stored_scale(tmp_path, w, x):
    folder = write_saelens(
        tmp_path / "s",
        "standard",
        w,
        normalize_activations="expected_average_only_in",
        norm_scaling_factor=2.5,
    )
    sae = load_sae(folder)
    f_ref = torch.relu(ref_pre(w, x, scale=2.5))
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), f_ref, atol=ATOL)
        assert torch.allclose(sae.decode(f_ref), ref_decode(w, f_ref, scale=2.5), atol=ATOL)


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "expected_average_only_in", "layer_norm"])
def test_saelens_unsupported_normalisation(tmp_path, w, norm):
    folder = write_saelens(tmp_path / "s", "standard", w, normalize_activations=norm)
    msg = error_of(load_sae, folder)
    assert "cfg.json" in msg and norm in msg


def test_saelens_topk_rescale_acts_by_decoder_norm(tmp_path, w, x):
    folder = write_saelens(tmp_path / "s", "topk", w, rescale_acts_by_decoder_norm=True)
    norms = w["W_dec"].norm(dim=-1)
    # SAELens: topk of hidden_pre * ||W_dec row||, then decode (f / ||W_dec row||) @ W_dec + b_dec.
    f_ref = ref_topk(torch.relu(ref_pre(w, x) * norms), K)
    sae = load_sae(folder)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), f_ref, atol=ATOL)
        assert torch.allclose(sae.decode(f_ref), (f_ref / norms) @ w["W_dec"] + w["b_dec"], atol=ATOL)


def test_saelens_batchtopk_saved_as_jumprelu_keeps_its_label(tmp_path, w, x):
    folder = write_saelens(tmp_path / "s", "jumprelu", w)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"].update(training_architecture="batchtopk", training_architecture_details={"k": K})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(folder)
    assert sae.architecture == "batchtopk"
    assert_matches(sae, w, x, ref_encode("jumprelu", w, x))


# ---------------------------------------------------------------- sparsify


def test_sparsify_folder_and_parent_with_one_hookpoint(tmp_path, w, x):
    folder = write_sparsify(tmp_path / "run" / "layers.3", w)
    f_ref = ref_topk(torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]), K)  # sparsify subtracts b_dec
    for path in (folder, tmp_path / "run"):
        sae = load_sae(path)
        assert (sae.architecture, sae.cfg.k, sae.cfg.hook_name) == ("topk", K, "blocks.3.hook_resid_post")
        assert_matches(sae, w, x, f_ref)
    assert load_sae(tmp_path / "run").name == "run"


@pytest.mark.parametrize(
    "extra", [{"transcode": True}, {"activation": "groupmax"}, {"skip_connection": True}]
)
def test_sparsify_unsupported_variants(tmp_path, w, extra):
    folder = write_sparsify(tmp_path / "layers.0", w, **extra)
    assert "sae.safetensors" in error_of(load_sae, folder)


# ---------------------------------------------------------------- dictionary_learning


def _dl_state(dict_class: str, w: dict[str, Tensor]) -> tuple[dict[str, Tensor], str, bool]:
    """(state dict as the class saves it, saeval reference architecture, subtracts b_dec)."""
    linear = {
        "encoder.weight": w["W_enc"].T.contiguous(),
        "encoder.bias": w["b_enc"],
        "decoder.weight": w["W_dec"].T.contiguous(),
    }
    plain = {k: w[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    k_buf = torch.tensor(K, dtype=torch.int)
    return {
        "AutoEncoder": ({**linear, "bias": w["b_dec"]}, "relu", True),
        "GatedAutoEncoder": (
            {
                "encoder.weight": w["W_enc"].T.contiguous(),
                "decoder.weight": linear["decoder.weight"],
                "decoder_bias": w["b_dec"],
                "gate_bias": w["b_gate"],
                "r_mag": w["r_mag"],
                "mag_bias": w["b_mag"],
            },
            "gated",
            True,
        ),
        "AutoEncoderTopK": (
            {**linear, "b_dec": w["b_dec"], "k": k_buf, "threshold": torch.tensor(0.4)},
            "topk",
            True,
        ),
        "BatchTopKSAE": (
            {**linear, "b_dec": w["b_dec"], "k": k_buf, "threshold": torch.tensor(0.4)},
            "batch",
            True,
        ),
        "MatryoshkaBatchTopKSAE": (
            {**plain, "k": k_buf, "threshold": torch.tensor(0.4), "group_sizes": torch.tensor([16, 48])},
            "batch",
            True,
        ),
        "JumpReluAutoEncoder": ({**plain, "threshold": w["threshold"]}, "jumprelu", False),
    }[dict_class]


@pytest.mark.parametrize(
    "dict_class",
    [
        "AutoEncoder",
        "GatedAutoEncoder",
        "AutoEncoderTopK",
        "BatchTopKSAE",
        "MatryoshkaBatchTopKSAE",
        "JumpReluAutoEncoder",
    ],
)
def test_dictionary_learning_reproduces_outputs(tmp_path, w, x, dict_class):
    state, arch, subtract = _dl_state(dict_class, w)
    sae = load_sae(write_dictionary_learning(tmp_path / "trainer_0", dict_class, state))
    if arch == "batch":  # default encode: post-ReLU acts kept where above the one global threshold
        post = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        f_ref = post * (post > 0.4)
    else:
        f_ref = ref_encode(arch, w, x, subtract_b_dec=subtract)
    assert_matches(sae, w, x, f_ref)
    assert (sae.cfg.hook_name, sae.cfg.model_name, sae.name) == (
        "blocks.3.hook_resid_post",
        "tiny-lm",
        "trainer_0",
    )


def test_dictionary_learning_errors(tmp_path, w):
    state, _, _ = _dl_state("AutoEncoder", w)
    folder = write_dictionary_learning(tmp_path / "a", "AutoEncoder", state)
    (folder / "config.json").unlink()
    assert "config.json" in error_of(load_sae, folder)
    folder = write_dictionary_learning(tmp_path / "b", "CrossCoder", state)
    assert "CrossCoder" in error_of(load_sae, folder)
    folder = write_dictionary_learning(tmp_path / "c", "AutoEncoder", state)
    data = (folder / "ae.pt").read_bytes()
    (folder / "ae.pt").write_bytes(data[: len(data) // 2])
    assert "ae.pt" in error_of(load_sae, folder)
    folder = write_dictionary_learning(
        tmp_path / "d", "AutoEncoder", {k: v for k, v in state.items() if k != "bias"}
    )
    assert "'bias'" in error_of(load_sae, folder)


class _Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_dictionary_learning_pickle_payload_is_not_executed(tmp_path, w):
    state, _, _ = _dl_state("AutoEncoder", w)
    marker = tmp_path / "pwned"
    folder = write_dictionary_learning(tmp_path / "evil", "AutoEncoder", {**state, "extra": _Payload(marker)})
    message = error_of(load_sae, folder)
    assert not marker.exists() and "ae.pt" in message and "\n" not in message


# ---------------------------------------------------------------- Gemma Scope


def test_gemma_scope_params_npz(tmp_path, w, x):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_20"
    folder.mkdir(parents=True)
    np.savez(
        folder / "params.npz", **{k: w[k].numpy() for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    )
    sae = load_sae(folder / "params.npz")
    assert (sae.architecture, sae.cfg.apply_b_dec_to_input) == ("jumprelu", False)
    assert (sae.cfg.hook_name, sae.cfg.model_name) == ("blocks.3.hook_resid_post", "gemma-2-2b")
    assert_matches(sae, w, x, ref_encode("jumprelu", w, x, subtract_b_dec=False))

    (folder / "params.npz").write_bytes((folder / "params.npz").read_bytes()[:100])
    assert "params.npz" in error_of(load_sae, folder)


# ---------------------------------------------------------------- bad inputs


def test_bad_saelens_files_name_the_file(tmp_path, w):
    folder = write_saelens(tmp_path / "missing", "standard", w)
    (folder / "sae_weights.safetensors").unlink()
    assert "sae_weights.safetensors" in error_of(load_sae, folder)

    folder = write_saelens(tmp_path / "truncated", "standard", w)
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    assert "sae_weights.safetensors" in error_of(load_sae, folder)

    folder = write_saelens(tmp_path / "shape", "standard", w, d_in=D + 1)
    msg = error_of(load_sae, folder)
    assert "sae_weights.safetensors" in msg and "shape" in msg and "d_in=17" in msg

    folder = write_saelens(tmp_path / "arch", "standard", w, architecture="transcoder")
    msg = error_of(load_sae, folder)
    assert "cfg.json" in msg and "transcoder" in msg

    folder = write_saelens(tmp_path / "no-threshold", "standard", w, architecture="jumprelu")
    msg = error_of(load_sae, folder)
    assert "sae_weights.safetensors" in msg and "threshold" in msg

    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "cfg.json").write_text("{not json")
    (tmp_path / "badjson" / "sae_weights.safetensors").write_bytes(b"")
    assert "cfg.json" in error_of(load_sae, tmp_path / "badjson")


def test_all_problems_of_one_sae_come_in_one_line(tmp_path, w):
    bad = {**w, "W_dec": w["W_dec"][:, :-1], "b_enc": w["b_enc"].clone()}
    bad["b_enc"][0] = float("nan")
    folder = write_saelens(tmp_path / "many", "topk", bad, k=F + 1)
    msg = error_of(load_sae, folder)
    assert msg.startswith(str(folder / "cfg.json"))
    problems = msg.split(": ", 1)[1].split("; ")
    assert problems[0].startswith(f"k={F + 1} but a topk SAE keeps between 1 and d_sae={F}")
    assert problems[1].startswith(f"W_dec has shape [{F}, {D - 1}]")
    assert problems[2:] == [f"b_enc has 1 NaN of {F} values"]


def test_unknown_paths_list_the_formats(tmp_path, w):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.bin").write_bytes(b"123")
    msg = error_of(load_sae, tmp_path / "empty")
    assert all(name in msg for name in ("SAELens", "sparsify", "dictionary_learning", "Gemma Scope"))
    assert "SAELens" in error_of(load_sae, tmp_path / "empty" / "weights.bin")
    assert "no such file" in error_of(load_sae, tmp_path / "nope")
    write_sparsify(tmp_path / "two" / "layers.1", w)
    write_sparsify(tmp_path / "two" / "layers.2", w)
    assert "layers.1" in error_of(load_sae, tmp_path / "two")


def test_release_id_without_sae_lens_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # makes `import sae_lens` raise ImportError
    for spec in (
        "gpt2-small-res-jb:blocks.8.hook_resid_pre",
        '{"release": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre"}',
    ):
        msg = error_of(load_sae, spec)
        assert "pip install 'saeval[sae-lens]'" in msg and "network" in msg


# ---------------------------------------------------------------- architecture properties


def _sae(arch: str, w: dict[str, Tensor], **cfg):
    sae = create_sae(SAEConfig(architecture=arch, d_in=D, d_sae=F, **cfg))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(w[name])
    return sae


def test_topk_keeps_exactly_k(tmp_path, w, x):
    sae = load_sae(write_saelens(tmp_path / "t", "topk", w))
    with torch.no_grad():
        assert ((torch.relu(sae.pre_acts(x)) > 0).sum(-1) > K).all()  # the property is not vacuous
        assert ((sae.encode(x) != 0).sum(-1) == K).all()


def test_jumprelu_zeroes_below_threshold(tmp_path, w, x):
    sae = load_sae(write_saelens(tmp_path / "j", "jumprelu", w))
    with torch.no_grad():
        pre, f = ref_pre(w, x), sae.encode(x)
    below = pre <= w["threshold"]
    assert below.any() and (~below).any() and ((pre > 0) & below).any()
    assert (f[below] == 0).all()
    assert torch.allclose(f[~below], pre[~below], atol=ATOL)


def test_gated_matches_gate_and_magnitude(tmp_path, w, x):
    sae = load_sae(write_saelens(tmp_path / "g", "gated", w))
    xc = x - w["b_dec"]
    gate_open = (xc @ w["W_enc"] + w["b_gate"]) > 0
    magnitude = torch.relu(xc @ w["W_enc"] * w["r_mag"].exp() + w["b_mag"])
    with torch.no_grad():
        f = sae.encode(x)
    assert gate_open.any() and (~gate_open).any()
    assert (f[~gate_open] == 0).all()
    assert torch.allclose(f[gate_open], magnitude[gate_open], atol=ATOL)


# ---------------------------------------------------------------- save_sae


@pytest.mark.parametrize(
    "arch,cfg",
    [
        ("relu", {}),
        ("topk", {"k": K}),
        ("jumprelu", {}),
        ("gated", {}),
        ("batchtopk", {"k": K}),
        ("relu", {"act_scale": 3.0}),
        ("jumprelu", {"act_scale": 0.5, "apply_b_dec_to_input": False}),
    ],
)
def test_save_load_round_trip(tmp_path, w, x, arch, cfg):
    sae = _sae(arch, w, hook_name="blocks.1.hook_mlp_out", model_name="m", **cfg)
    folder = save_sae(sae, tmp_path / "out")
    back = load_sae(folder)
    with torch.no_grad():
        f, f_back = sae.encode(x), back.encode(x)
        exact = "act_scale" not in cfg  # folding a scale rounds; otherwise weights are copied bit for bit
        assert torch.equal(f, f_back) if exact else torch.allclose(f, f_back, atol=ATOL)
        assert torch.allclose(sae.decode(f), back.decode(f), atol=ATOL)
    assert (back.architecture, back.cfg.hook_name, back.cfg.model_name) == (
        arch,
        "blocks.1.hook_mlp_out",
        "m",
    )
    written = json.loads((folder / "cfg.json").read_text())
    assert (
        written["metadata"]["hook_name"] == "blocks.1.hook_mlp_out"
        and written["normalize_activations"] == "none"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left behind


def test_saved_files_are_readable_by_others(tmp_path, w):
    folder = save_sae(_sae("relu", w), tmp_path / "shared")
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        "cfg.json": 0o644, "sae_weights.safetensors": 0o644}


def test_formats_package_keeps_its_public_api():
    import saeval.saes.formats as formats
    from saeval.saes.formats.dictionary_learning import from_dictionary_learning
    from saeval.saes.formats.saelens import from_saelens_dict
    from saeval.saes.formats.saelens import save_sae as saelens_save
    from saeval.saes.formats.sparsify import from_sparsify

    assert formats.save_sae is saelens_save is save_sae and formats.load_sae is load_sae
    assert (formats.from_saelens_dict, formats.from_sparsify, formats.from_dictionary_learning) == (
        from_saelens_dict, from_sparsify, from_dictionary_learning)
    assert "AutoEncoder" in formats.DL_CLASSES and "release:sae_id" in formats.FORMATS


def test_batchtopk_without_threshold_round_trips_as_topk(tmp_path, w, x):
    sae = _sae("batchtopk", {**w, "threshold": torch.zeros(F)}, k=K)
    back = load_sae(save_sae(sae, tmp_path / "b"))
    assert back.architecture == "batchtopk"
    with torch.no_grad():
        assert ((back.encode(x) != 0).sum(-1) == K).all()
        assert torch.equal(sae.encode(x), back.encode(x))


def test_save_overwrites_previous_save_but_not_other_folders(tmp_path, w, x):
    folder = save_sae(_sae("relu", w), tmp_path / "s")
    save_sae(_sae("relu", _weights(seed=5)), folder)
    assert torch.equal(load_sae(folder).W_enc, _weights(seed=5)["W_enc"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert "notes.txt" in error_of(save_sae, _sae("relu", w), tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- wrap_sae


class _AbsSAE:
    """A foreign SAE with an activation saeval lacks: |pre| with top-2."""

    def __init__(self, w: dict[str, Tensor]):
        self.W_enc, self.W_dec, self.b_dec = w["W_enc"], w["W_dec"], w["b_dec"]
        self.cfg = {"d_in": D, "d_sae": F, "hook_name": "blocks.0.hook_resid_post"}

    def encode(self, x: Tensor) -> tuple[Tensor, None]:
        return ref_topk((x @ self.W_enc).abs(), 2), None

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec


def test_wrap_delegates_unknown_activation(w, x):
    sae = wrap_sae(_AbsSAE(w), name="abs")
    f_ref = ref_topk((x @ w["W_enc"]).abs(), 2)
    assert_matches(sae, w, x, f_ref)
    assert (sae.name, sae.d_in, sae.d_sae, sae.cfg.hook_name) == ("abs", D, F, "blocks.0.hook_resid_post")
    assert torch.equal(sae.W_dec, w["W_dec"])
    with pytest.raises(SaevalError):
        sae.pre_acts(x)
    assert "cannot save" in error_of(save_sae, sae, Path("/nonexistent/x"))


def test_wrap_converts_weight_objects(w, x):
    obj = SimpleNamespace(
        **{k: w[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")},
        cfg=SimpleNamespace(d_in=D, d_sae=F, apply_b_dec_to_input=True),
    )
    sae = wrap_sae(obj)
    assert sae.architecture == "jumprelu"  # inferred from the threshold tensor
    assert_matches(sae, w, x, ref_encode("jumprelu", w, x))

    class AutoEncoder(nn.Module):  # dictionary_learning's class, by name and state-dict layout
        def __init__(self) -> None:
            super().__init__()
            self.activation_dim, self.dict_size = D, F
            self.bias = nn.Parameter(w["b_dec"].clone())
            self.encoder = nn.Linear(D, F)
            self.decoder = nn.Linear(F, D, bias=False)
            with torch.no_grad():
                self.encoder.weight.copy_(w["W_enc"].T)
                self.encoder.bias.copy_(w["b_enc"])
                self.decoder.weight.copy_(w["W_dec"].T)

    assert_matches(wrap_sae(AutoEncoder()), w, x, ref_encode("relu", w, x))
    assert "cannot use" in error_of(wrap_sae, object())


# ---------------------------------------------------------------- interop with the real sae-lens package


def _saelens_sae(arch: str, seed: int = 0, **cfg):
    sl = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    classes = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig),
        "gated": (sl.GatedSAE, sl.GatedSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    meta = SAEMetadata(model_name="tiny", hook_name="blocks.0.hook_resid_post")
    sae = cls(cfg_cls(d_in=D, d_sae=F, metadata=meta, **({"k": K} if arch == "topk" else {}), **cfg))
    w = _weights(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(w[name])
    return sae


@pytest.mark.parametrize(
    "arch,cfg",
    [
        ("standard", {}),
        ("topk", {}),
        ("jumprelu", {}),
        ("gated", {}),
        ("topk", {"rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {"apply_b_dec_to_input": False}),
    ],
)
def test_saelens_saved_sae_loads_identically(tmp_path, x, arch, cfg):
    theirs = _saelens_sae(arch, **cfg)
    theirs.save_model(tmp_path / "sl")
    ours = load_sae(tmp_path / "sl")
    with torch.no_grad():
        f = theirs.encode(x)
        assert torch.allclose(ours.encode(x), f, atol=ATOL)
        assert torch.allclose(ours.decode(f), theirs.decode(f), atol=ATOL)
        wrapped = wrap_sae(theirs)
        assert wrapped.architecture == ours.architecture  # weights converted, not delegated
        assert torch.allclose(wrapped.encode(x), f, atol=ATOL)
    assert ours.cfg.hook_name == "blocks.0.hook_resid_post"


@pytest.mark.parametrize(
    "arch,cfg",
    [
        ("relu", {}),
        ("topk", {"k": K}),
        ("jumprelu", {}),
        ("gated", {}),
        ("batchtopk", {"k": K}),
        ("relu", {"act_scale": 2.0}),
    ],
)
def test_saeval_saved_sae_loads_in_saelens(tmp_path, w, x, arch, cfg):
    sl = pytest.importorskip("sae_lens")
    ours = _sae(arch, w, hook_name="blocks.1.hook_resid_post", model_name="m", **cfg)
    theirs = sl.SAE.load_from_disk(save_sae(ours, tmp_path / "ours"))
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    with torch.no_grad():
        f = ours.encode(x)
        assert torch.allclose(theirs.encode(x), f, atol=ATOL)
        assert torch.allclose(theirs.decode(f), ours.decode(f), atol=ATOL)


def test_release_id_goes_through_sae_lens(monkeypatch, x):
    sl = pytest.importorskip("sae_lens")
    theirs = _saelens_sae("jumprelu")
    calls = []

    def fake_from_pretrained(release, sae_id, device="cpu", **_):
        calls.append((release, sae_id, device))
        return theirs

    monkeypatch.setattr(sl.SAE, "from_pretrained", fake_from_pretrained)
    sae = load_sae("my-release:blocks.0.hook_resid_post")
    assert calls == [("my-release", "blocks.0.hook_resid_post", "cpu")]
    assert sae.name == "my-release/blocks.0.hook_resid_post"
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), theirs.encode(x), atol=ATOL)
