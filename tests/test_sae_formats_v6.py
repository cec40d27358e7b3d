"""SAELens 6.x architectures: Matryoshka BatchTopK SAEs and transcoders, read from folders written by the real
sae-lens package (and by hand in dictionary_learning's exact ae.pt + config.json layout), checked against
sae-lens's own encode/decode, its own Matryoshka level decoder, and plain-torch formulas.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from saeval.results import SAEInfo
from saeval.runner.fingerprints import sae_fingerprint
from saeval.runner.plan import check_transcoder_evals, resolve_evals
from saeval.saes import SAEConfig, create_sae, load_sae, save_sae, wrap_sae
from tests.helpers import error_of

sl = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

D_IN, D_OUT, F, K = 16, 24, 64, 6
WIDTHS = [8, 24, F]
ATOL = 1e-5
HOOK_IN, HOOK_OUT = "blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out"


def _x(d: int = D_IN, n: int = 32, seed: int = 1) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _fill(module, seed: int = 0, threshold: float = 0.3) -> None:
    """Random weights of the shapes the module has; thresholds uniform in [0, threshold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * threshold)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)


# ---------------------------------------------------------------- transcoders


def _saelens_transcoder(arch: str, seed: int = 0):
    classes = {"transcoder": (sl.Transcoder, sl.TranscoderConfig),
               "jumprelu_transcoder": (sl.JumpReLUTranscoder, sl.JumpReLUTranscoderConfig),
               "skip_transcoder": (sl.SkipTranscoder, sl.SkipTranscoderConfig)}
    cls, cfg_cls = classes[arch]
    meta = SAEMetadata(model_name="tiny", hook_name=HOOK_IN, hook_name_out=HOOK_OUT)
    tc = cls(cfg_cls(d_in=D_IN, d_out=D_OUT, d_sae=F, apply_b_dec_to_input=False, metadata=meta))
    _fill(tc, seed)
    return tc


@pytest.mark.parametrize("arch", ["transcoder", "jumprelu_transcoder"])
def test_saelens_transcoder_matches_saelens(tmp_path, arch):
    theirs = _saelens_transcoder(arch)
    theirs.save_model(tmp_path / "tc")
    ours = load_sae(tmp_path / "tc")
    x = _x()
    assert ours.is_transcoder and (ours.cfg.hook_name, ours.cfg.hook_name_out) == (HOOK_IN, HOOK_OUT)
    assert (ours.d_in, ours.d_out, ours.d_sae) == (D_IN, D_OUT, F) and not ours.cfg.apply_b_dec_to_input
    with torch.no_grad():
        f = theirs.encode(x)
        assert (f > 0).any() and (f == 0).any()
        assert torch.allclose(ours.encode(x), f, atol=ATOL)
        out = ours.decode(f)
        assert out.shape == (32, D_OUT) and torch.allclose(out, theirs.decode(f), atol=ATOL)
        assert torch.allclose(ours(x), theirs(x), atol=ATOL)
        # The input is not centred by b_dec (it lives in the output space): plain formula, no saeval code.
        w = {n: p.detach() for n, p in theirs.named_parameters()}
        pre = x @ w["W_enc"] + w["b_enc"]
        ref = torch.relu(pre) * (pre > w["threshold"]) if "threshold" in w else torch.relu(pre)
        assert torch.allclose(ours.encode(x), ref, atol=ATOL)
        # wrap_sae converts the in-memory object through the same reader.
        wrapped = wrap_sae(theirs)
        assert wrapped.is_transcoder and torch.allclose(wrapped(x), theirs(x), atol=ATOL)


@pytest.mark.parametrize("arch", ["transcoder", "jumprelu_transcoder"])
def test_transcoder_round_trips_and_loads_in_saelens(tmp_path, arch):
    ours = load_sae(_saelens_transcoder(arch, seed=3).save_model(tmp_path / "in")[0].parent)
    folder = save_sae(ours, tmp_path / "out")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == arch
    again = load_sae(folder)
    theirs = sl.SAE.load_from_disk(folder)
    assert type(theirs).__name__ == {"transcoder": "Transcoder", "jumprelu_transcoder": "JumpReLUTranscoder"}[arch]
    assert theirs.cfg.metadata.hook_name_out == HOOK_OUT and theirs.cfg.d_out == D_OUT
    assert (again.cfg.hook_name_out, again.d_out, again.architecture) == (HOOK_OUT, D_OUT, ours.architecture)
    x = _x(seed=4)
    with torch.no_grad():
        assert torch.allclose(again(x), ours(x), atol=ATOL)
        assert torch.allclose(theirs(x), ours(x), atol=ATOL)


def test_transcoders_that_cannot_work_fail_in_one_line(tmp_path):
    _saelens_transcoder("skip_transcoder").save_model(tmp_path / "skip")
    assert "skip_transcoder" in error_of(load_sae, tmp_path / "skip") and "W_skip" in error_of(load_sae,
                                                                                                 tmp_path / "skip")
    folder = _saelens_transcoder("transcoder").save_model(tmp_path / "no-out")[0].parent
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["metadata"]["hook_name_out"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert "hook_name_out" in error_of(load_sae, folder)
    cfg["metadata"]["hook_name_out"], cfg["apply_b_dec_to_input"] = HOOK_OUT, True
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert "apply_b_dec_to_input=false" in error_of(load_sae, folder)
    cfg["apply_b_dec_to_input"], cfg["d_out"] = False, D_OUT + 1
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert "d_out=25" in error_of(load_sae, folder)


# ---------------------------------------------------------------- Matryoshka BatchTopK


def _saelens_matryoshka(seed: int = 0, rescale: bool = True, topk_threshold: float = 0.25):
    cfg = sl.MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=F, k=K, matryoshka_widths=list(WIDTHS), rescale_acts_by_decoder_norm=rescale,
        metadata=SAEMetadata(model_name="tiny", hook_name="blocks.1.hook_resid_post"))
    sae = sl.MatryoshkaBatchTopKTrainingSAE(cfg)
    _fill(sae, seed)
    sae.topk_threshold = torch.tensor(topk_threshold, dtype=torch.double)
    return sae


def _zeroed_decode(f: np.ndarray, W_dec: np.ndarray, b_dec: np.ndarray, w: int) -> np.ndarray:
    """Decode with latents >= w set to zero (numpy, no saeval code)."""
    kept = f.copy()
    kept[:, w:] = 0
    return kept @ W_dec + b_dec


@pytest.mark.parametrize("rescale", [True, False])
def test_saelens_matryoshka_matches_saelens_and_its_levels(tmp_path, rescale):
    trainer = _saelens_matryoshka(rescale=rescale)
    trainer.save_model(tmp_path / "ckpt")  # training checkpoint: matryoshka_batchtopk + scalar topk_threshold
    trainer.save_inference_model(tmp_path / "inf")  # inference: a JumpReLU, widths in metadata
    reference = sl.SAE.load_from_disk(tmp_path / "inf")
    assert type(reference).__name__ == "JumpReLUSAE"
    x = _x()
    for folder in ("ckpt", "inf"):
        ours = load_sae(tmp_path / folder)
        assert ours.architecture == "matryoshka_batchtopk" and ours.cfg.matryoshka_widths == WIDTHS, folder
        with torch.no_grad():
            f = reference.encode(x)
            assert 0 < int((f > 0).sum()) < f.numel()
            assert torch.allclose(ours.encode(x), f, atol=ATOL), folder
            assert torch.allclose(ours.decode(f), reference.decode(f), atol=ATOL), folder
            # Each prefix reconstruction equals sae-lens's own Matryoshka level decoder (the nested losses)...
            levels = dict(trainer._iterable_decode(f, include_outer_loss=True))
            assert sorted(levels) == WIDTHS
            for w in WIDTHS:
                prefix = ours.prefix(w)
                assert prefix.d_sae == w and prefix.cfg.matryoshka_widths == [v for v in WIDTHS if v <= w]
                f_w = prefix.encode(x)
                assert torch.allclose(f_w, f[:, :w], atol=ATOL)
                assert torch.allclose(prefix.decode(f_w), levels[w], atol=ATOL), (folder, w)
                # ...and decoding with the latents >= w zeroed, in numpy.
                zeroed = _zeroed_decode(f.numpy(), ours.W_dec.detach().numpy(), ours.b_dec.detach().numpy(), w)
                np.testing.assert_allclose(prefix(x).numpy(), zeroed, atol=ATOL)
    wrapped = wrap_sae(trainer)  # the training object in memory goes through the same reader
    assert wrapped.architecture == "matryoshka_batchtopk" and wrapped.cfg.matryoshka_widths == WIDTHS
    with torch.no_grad():
        assert torch.allclose(wrapped(x), reference(x), atol=ATOL)


def _dl_matryoshka_folder(folder: Path, threshold: float, seed: int = 0) -> tuple[Path, dict[str, Tensor]]:
    """dictionary_learning's MatryoshkaBatchTopKSAE as its training loop saves it (checked against
    saprmarks/dictionary_learning@60ec6bf): ae.pt = the module's state dict (W_enc [d_in, d_sae], b_enc,
    W_dec [d_sae, d_in], b_dec, buffers k, threshold, group_sizes); config.json = {"trainer": trainer.config}."""
    g = torch.Generator().manual_seed(seed)
    sizes = [WIDTHS[0], *(b - a for a, b in zip(WIDTHS, WIDTHS[1:], strict=False))]
    state = {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(threshold, dtype=torch.float32),
             "group_sizes": torch.tensor(sizes), "W_enc": torch.randn(D_IN, F, generator=g) * 0.4,
             "b_enc": torch.randn(F, generator=g) * 0.1, "W_dec": torch.randn(F, D_IN, generator=g) * 0.4,
             "b_dec": torch.randn(D_IN, generator=g) * 0.4}
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    trainer = {"trainer_class": "MatryoshkaBatchTopKTrainer", "dict_class": "MatryoshkaBatchTopKSAE", "lr": 1e-4,
               "steps": 10, "activation_dim": D_IN, "dict_size": F, "group_fractions": [s / F for s in sizes],
               "group_weights": [1 / 3] * 3, "group_sizes": sizes, "k": K, "device": "cpu", "layer": 2,
               "lm_name": "tiny-lm", "wandb_name": "x", "submodule_name": "resid_post_layer_2"}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"d_submodule": D_IN}}, indent=4))
    return folder, state


def test_dictionary_learning_matryoshka_and_its_groups(tmp_path):
    folder, s = _dl_matryoshka_folder(tmp_path / "trainer_0", threshold=0.3)
    sae = load_sae(folder)
    assert sae.architecture == "matryoshka_batchtopk" and sae.cfg.matryoshka_widths == WIDTHS
    assert (sae.cfg.hook_name, sae.cfg.k) == ("blocks.2.hook_resid_post", K)
    x = _x()
    # MatryoshkaBatchTopKSAE.encode (use_threshold=True) and decode, as in its source.
    post = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
    f_ref = post * (post > s["threshold"])
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), f_ref, atol=ATOL)
        assert torch.allclose(sae.decode(f_ref), f_ref @ s["W_dec"] + s["b_dec"], atol=ATOL)
        # The trainer's nested losses: group chunks of W_dec added one by one onto b_dec.
        x_hat = s["b_dec"].expand(len(x), -1)
        chunks = zip(torch.split(s["W_dec"], s["group_sizes"].tolist()), torch.split(f_ref, s["group_sizes"].tolist(),
                                                                                      dim=1), strict=True)
        for w, (W_chunk, f_chunk) in zip(WIDTHS, chunks, strict=True):
            x_hat = x_hat + f_chunk @ W_chunk
            assert torch.allclose(sae.prefix(w)(x), x_hat, atol=ATOL), w


def test_matryoshka_save_round_trip_keeps_widths(tmp_path):
    sae = load_sae(_dl_matryoshka_folder(tmp_path / "dl", threshold=0.3)[0])
    folder = save_sae(sae, tmp_path / "saved")
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert meta["training_architecture"] == "matryoshka_batchtopk"
    again, theirs = load_sae(folder), sl.SAE.load_from_disk(folder)
    assert again.architecture == "matryoshka_batchtopk" and again.cfg.matryoshka_widths == WIDTHS
    x = _x(seed=5)
    with torch.no_grad():
        assert torch.allclose(again(x), sae(x), atol=ATOL) and torch.allclose(theirs(x), sae(x), atol=ATOL)
        # A prefix of a thresholded SAE is a working SAE of its own: saved, it reloads with the same outputs.
        prefix = load_sae(save_sae(sae.prefix(24), tmp_path / "prefix"))
        assert (prefix.d_sae, prefix.cfg.matryoshka_widths) == (24, [8, 24])
        assert torch.allclose(prefix(x), sae.prefix(24)(x), atol=ATOL)


def test_topk_prefix_keeps_the_full_sae_winners():
    """For TopK the latents are picked among all d_sae: the prefix zeroes the later ones, it does not re-pick."""
    sae = create_sae(SAEConfig(architecture="topk", d_in=D_IN, d_sae=F, k=K, matryoshka_widths=WIDTHS))
    _fill(sae, seed=7)
    x = _x()
    with torch.no_grad():
        f = sae.encode(x).numpy()
        for w in WIDTHS[:-1]:
            got = sae.prefix(w)(x).numpy()
            np.testing.assert_allclose(got, _zeroed_decode(f, sae.W_dec.numpy(), sae.b_dec.numpy(), w), atol=ATOL)
            assert (np.count_nonzero(sae.prefix(w).encode(x).numpy(), axis=1) <= K).all()
    assert sae.prefix(F) is sae
    assert "between 1 and d_sae=64" in error_of(sae.prefix, F + 1)
    assert sae.prefix(24).prefix(8).d_sae == 8 and "between 1 and d_sae=24" in error_of(sae.prefix(24).prefix, 30)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"matryoshka_widths": [8, 32]}, "end at d_sae=64"),
        ({"matryoshka_widths": [24, 8, 64]}, "strictly increasing"),
        ({"architecture": "matryoshka_batchtopk"}, "needs matryoshka_widths"),
        ({"hook_name_out": HOOK_OUT, "apply_b_dec_to_input": True}, "apply_b_dec_to_input=false"),
        ({"d_out": D_OUT}, "no hook_name_out"),
    ],
)
def test_bad_new_fields_fail_in_one_line(cfg, message):
    full = {"architecture": "relu", "d_in": D_IN, "d_sae": F, "apply_b_dec_to_input": False, **cfg}
    assert message in error_of(create_sae, SAEConfig(**full))


# ---------------------------------------------------------------- results, names, fingerprints, the runner


def test_results_report_widths_and_output_hook_and_fingerprints_work(tmp_path):
    tc = load_sae(_saelens_transcoder("jumprelu_transcoder").save_model(tmp_path / "my-tc")[0].parent)
    mat = load_sae(_dl_matryoshka_folder(tmp_path / "my-mat", threshold=0.3)[0])
    info_tc, info_mat = SAEInfo.of(tc), SAEInfo.of(mat)
    assert (info_tc.name, info_tc.hook_name, info_tc.hook_name_out, info_tc.matryoshka_widths) == (
        "my-tc", HOOK_IN, HOOK_OUT, None)
    assert (info_mat.name, info_mat.matryoshka_widths, info_mat.hook_name_out) == ("my-mat", WIDTHS, None)
    assert SAEInfo.model_validate_json(info_mat.model_dump_json()) == info_mat
    fp = sae_fingerprint(tc)
    assert fp == sae_fingerprint(load_sae(tmp_path / "my-tc"))
    with torch.no_grad():
        tc.W_dec[0, 0] += 1.0  # a decoder edit (width d_out) changes the hash
    assert sae_fingerprint(tc) != fp
    assert sae_fingerprint(mat.prefix(8)) != sae_fingerprint(mat)


def test_runner_refuses_transcoders_for_evals_other_than_core(tmp_path):
    tc = load_sae(_saelens_transcoder("transcoder").save_model(tmp_path / "tc")[0].parent)
    check_transcoder_evals(tc, resolve_evals(["core"], "tiny"))
    msg = error_of(check_transcoder_evals, tc, resolve_evals(["steerability", "tpp"], "tiny"))
    assert re.search(r"^eval steerability .*SAE tc is a transcoder \(blocks.1.hook_resid_pre -> "
                     r"blocks.1.hook_mlp_out\).*tpp.*run only core on transcoders \(--evals core\)$", msg), msg
    plain = create_sae(SAEConfig(architecture="relu", d_in=D_IN, d_sae=F))
    check_transcoder_evals(plain, resolve_evals(["steerability"], "tiny"))  # an SAE passes
