"""CLIP vision host, image loading and the CLIP steerability path, on a small randomly initialised CLIPModel
(no CLIP weights exist offline) and real images (Fashion-MNIST, the packaged photos)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saeval.analysis.steering import CLIPReadout
from saeval.data.images import load_fashion_mnist, load_images, preprocess_images, read_idx
from saeval.data.vocab import load_vocab
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.steerability import SteerabilityConfig
from saeval.evals.steerability.run import run, steer_sweep
from saeval.hosts.clip import CLIPHost
from saeval.saes import SAEConfig, create_sae

WIDTH = 256
HOOK = "blocks.2.hook_resid_post"  # output of the last vision block, as the paper's layer 11 of 12


def _has_pil() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_clip(smollm2_tokenizer):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    # Legacy text pooling (eos id 2: pool at the largest token id) reads a word token rather than a shared EOS,
    # so the random text tower gives distinct word embeddings; a larger embedding std does the same for tokens.
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16, eos_token_id=2,
                         bos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=3,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=WIDTH,
    )
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        model.text_model.embeddings.token_embedding.weight.normal_(0, 1.0)
    return CLIPHost.from_hf(model, smollm2_tokenizer, "tiny-clip")


@pytest.fixture(scope="module")
def images():
    imgs = load_images("fashion-mnist", 24, seed=0)
    return imgs + (load_images("photos", 8) if _has_pil() else [])


def test_hf_host_matches_transformers(tiny_clip, images):
    model = tiny_clip.model
    pixels = tiny_clip.preprocess(images[:12])
    ref = model.get_image_features(pixel_values=pixels)
    ref = getattr(ref, "pooler_output", ref)
    assert torch.allclose(tiny_clip.image_embeddings(pixels), ref, atol=1e-5)
    acts, state = tiny_clip.prefix(pixels, "blocks.1.hook_resid_post")
    assert acts.shape == (12, 17, WIDTH)  # CLS + 4x4 patches
    assert torch.allclose(tiny_clip.run_from(state, acts), ref, atol=1e-5)
    stacked = tiny_clip.run_from(state, acts.repeat(3, 1, 1))
    assert torch.allclose(stacked[12:24], ref, atol=1e-5) and torch.allclose(stacked[24:], ref, atol=1e-5)
    cap = tiny_clip.capture(pixels, ["blocks.1.hook_resid_post", "blocks.0.hook_resid_pre"])
    assert torch.equal(cap["blocks.1.hook_resid_post"], acts)
    hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.allclose(cap["blocks.0.hook_resid_pre"], hidden[0], atol=1e-5)
    assert torch.allclose(acts, hidden[2], atol=1e-5)
    tok = tiny_clip.backend.tokenizer
    text_ref = model.get_text_features(input_ids=torch.tensor([tok("dog")["input_ids"]]))
    text_ref = getattr(text_ref, "pooler_output", text_ref)
    assert torch.allclose(tiny_clip.text_embeddings(["cat", "dog"])[1], text_ref[0], atol=1e-5)


def test_bad_hooks_and_words(tiny_clip):
    with pytest.raises(SaevalError, match="unknown hook"):
        tiny_clip.hook("blocks.3.hook_resid_post")
    with pytest.raises(SaevalError, match="hook_resid_pre / hook_resid_post"):
        tiny_clip.hook("blocks.0.hook_mlp_out")
    with pytest.raises(SaevalError, match="tokenise to nothing.*''"):
        tiny_clip.text_embeddings(["dog", ""])
    with pytest.raises(SaevalError, match="empty"):
        tiny_clip.text_embeddings([])


def test_preprocess_known_answer():
    # 20 x 40 image, left half black, right half white: resized to 32 x 64, centre crop keeps columns 16..47,
    # so the crop is black on its left quarter-ish and white on its right.
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 20:] = 255
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x = preprocess_images([img], 32, mean, std)
    assert x.shape == (1, 3, 32, 32)
    for c in range(3):
        assert x[0, c, 10, 0].item() == pytest.approx((0 - mean[c]) / std[c], abs=1e-3)
        assert x[0, c, 10, 31].item() == pytest.approx((1 - mean[c]) / std[c], abs=1e-3)
    gray = preprocess_images([np.full((28, 28), 128, dtype=np.uint8)], 32, mean, std)
    assert torch.allclose(gray[0, :, 5, 5], (128 / 255 - torch.tensor(mean)) / torch.tensor(std), atol=1e-3)


def test_fashion_mnist_reader_and_bad_files(tmp_path):
    images, labels = load_fashion_mnist("t10k")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # the test split is balanced
    truncated = tmp_path / "t.gz"
    truncated.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + bytes(100)))
    with pytest.raises(SaevalError, match="t.gz"):
        read_idx(truncated)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"hello world")
    with pytest.raises(SaevalError, match="bad.idx.*magic"):
        read_idx(bad)


@pytest.mark.skipif(not _has_pil(), reason="needs Pillow to decode image files")
def test_image_folder_with_undecodable_file(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((8, 12, 3), 200, dtype=np.uint8)).save(tmp_path / "good.png")
    assert load_images(str(tmp_path))[0].shape == (8, 12, 3)
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(SaevalError, match="broken.jpg"):
        load_images(str(tmp_path))
    photos = load_images("photos")
    assert len(photos) == 10 and all(p.ndim == 3 and p.shape[2] == 3 for p in photos)


def _random_sae(d_sae: int, seed: int):
    sae = create_sae(SAEConfig(architecture="relu", d_in=WIDTH, d_sae=d_sae, hook_name=HOOK, name=f"rand{seed}"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(F.normalize(torch.randn(d_sae, WIDTH, generator=g), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T * 0.2)
        sae.b_enc.fill_(-0.5)
    return sae


def test_sweep_matches_hooked_forward(tiny_clip, images):
    """The stacked prefix/suffix engine against one hooked full forward per (latent, strength)."""
    sae = _random_sae(16, 1)
    words = load_vocab(size=200)
    config = SteerabilityConfig(n_inputs=11, batch_size=5, max_rows=30, images="fashion-mnist", vocab_size=200)
    readout = CLIPReadout(tiny_clip, HOOK, words, config, seed=3)
    latents, strengths, scale = [2, 9, 15], [0.0, 20.0, 150.0], 100.0
    delta, delta_logit, base_mean, _ = steer_sweep(readout, sae, latents, strengths, scale, config)
    pixels = readout.pixels
    T = readout.concepts_VE
    plain = F.normalize(tiny_clip.image_embeddings(pixels), dim=-1) @ T.T
    assert np.allclose(base_mean, torch.softmax(scale * plain, -1).mean(0).numpy(), atol=1e-6)
    for i, f in enumerate(latents):
        for j, s in enumerate(strengths):

            def steer(x, f=f, s=s):
                return x + (s - sae.encode(x)[..., f])[..., None] * sae.W_dec[f]

            cos = F.normalize(tiny_clip.image_embeddings(pixels, {HOOK: steer}), dim=-1) @ T.T
            expect = (torch.softmax(scale * cos, -1) - torch.softmax(scale * plain, -1)).mean(0)
            assert np.allclose(delta[i, j], expect.numpy(), atol=1e-5)
            assert np.allclose(delta_logit[i, j], (cos - plain).mean(0).numpy(), atol=1e-5)


def test_planted_latent_steers_toward_its_word(tiny_clip, images, tmp_path):
    """A latent whose decoder row moves the image embedding onto the text embedding of "dog" is steerable toward
    "dog"; random latents are not. Its direction is the text embedding pulled back through the projection and
    the final layer norm (least squares in the subspace the norm keeps)."""
    words = load_vocab(size=1000)
    assert "dog" in words
    model = tiny_clip.model
    target = tiny_clip.text_embeddings(["dog"])[0]
    ln, W = model.vision_model.post_layernorm, model.visual_projection.weight  # W: [E, D]
    centre = torch.eye(WIDTH) - 1.0 / WIDTH  # layer norm removes the mean: solve within its range
    A = W @ torch.diag(ln.weight) @ centre
    u = centre @ torch.linalg.lstsq(A, (target - W @ ln.bias)[:, None]).solution[:, 0]
    sae = _random_sae(32, 2)
    planted = 7
    with torch.no_grad():
        sae.W_dec[planted] = F.normalize(u, dim=0)
    ctx = EvalContext(host=tiny_clip, hook=HOOK, preset="test", seed=0)
    source = "fashion-mnist+photos" if _has_pil() else "fashion-mnist"
    # A random tower's text/image cosines spread far more than a trained CLIP's, so the paper's fixed scale 100
    # (a trained CLIP's exp(logit_scale)) would make any push look steerable: use this model's own scale.
    config = SteerabilityConfig(n_latents=32, n_inputs=32, vocab_size=1000, strengths=[0.0, 50.0, 150.0],
                                images=source, softmax_scale="model")
    result = run(ctx, sae, config)
    lat = {r.latent: r for r in result.details.latents}
    assert result.details.softmax_scale == pytest.approx(float(model.logit_scale.exp()))
    assert lat[planted].top_concept == "dog" and lat[planted].promoted[0][0] == "dog"
    assert lat[planted].steerability[-1] > 0.1
    assert lat[planted].top_concept_prob[-1] > 0.5
    others = [r.steerability for f, r in lat.items() if f != planted]
    assert max(max(s) for s in others) < 0.1
    assert result.metrics.n_steerable == 1 and result.metrics.frac_steerable == pytest.approx(1 / 32)
    assert result.metrics.n_distinct_top_concepts == 1


# ---------------------------------------------------------------------------------------- open_clip adapter
class _Block(nn.Module):
    """Token mixing over dim 0 (open_clip's token-first resblocks) or dim 1 (batch-first)."""

    def __init__(self, width: int, batch_first: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 4, batch_first=batch_first)
        self.mlp = nn.Linear(width, width)

    def forward(self, x, attn_mask=None):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + torch.tanh(self.mlp(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, style: str):
        super().__init__()
        self.width, self.style = width, style
        self.resblocks = nn.ModuleList(_Block(width, style == "batch_first") for _ in range(layers))
        if style in ("batch_first", "token_first_attr"):
            self.batch_first = style == "batch_first"

    def forward(self, x, attn_mask=None):
        if self.style != "old":  # newer open_clip: NLD in, transposed here when blocks are token-first
            x = x if self.style == "batch_first" else x.transpose(0, 1)
        for r in self.resblocks:
            x = r(x, attn_mask=attn_mask)
        if self.style != "old":
            x = x if self.style == "batch_first" else x.transpose(0, 1)
        return x


class _Visual(nn.Module):
    """The parts of open_clip's VisionTransformer the adapter touches, with its forward's order of operations."""

    def __init__(self, style: str, width: int = 32, layers: int = 3, out: int = 16):
        super().__init__()
        self.image_size, self.style = (16, 16), style
        self.conv1 = nn.Conv2d(3, width, kernel_size=8, stride=8, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn(5, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, style)
        self.proj = nn.Parameter(torch.randn(width, out) / width**0.5)
        self.attn_pool = None
        self.final_ln_after_pool = False

    def _global_pool(self, x):
        return x[:, 0], x[:, 1:]

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.expand(len(x), 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        if self.style == "old":  # old open_clip permuted to token-first before the transformer
            x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        else:
            x = self.transformer(x)
        return self._global_pool(self.ln_post(x))[0] @ self.proj


class _OpenCLIPModel(nn.Module):
    def __init__(self, style: str):
        super().__init__()
        self.visual = _Visual(style)
        self.token_embedding = nn.Embedding(100, 16)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    def encode_text(self, tokens):
        return self.token_embedding(tokens).mean(1)


class _Tokenizer:
    def encode(self, text):
        return [ord(c) % 97 + 1 for c in text]

    def __call__(self, texts):
        rows = [[98, *self.encode(t)[:6], 99] for t in texts]
        return torch.tensor([r + [0] * (8 - len(r)) for r in rows])


@pytest.mark.parametrize("style", ["old", "token_first_attr", "batch_first"])
def test_open_clip_adapter_layouts(style):
    torch.manual_seed(0)
    model = _OpenCLIPModel(style).eval()
    host = CLIPHost.from_open_clip(model, _Tokenizer(), f"fake-open-clip-{style}")
    assert host.backend.batch_first == (style != "old")  # what VisionTransformer hands its transformer
    pixels = torch.randn(3, 3, 16, 16)
    ref = model.visual(pixels)
    assert torch.allclose(host.image_embeddings(pixels), ref, atol=1e-5)
    acts, state = host.prefix(pixels, "blocks.0.hook_resid_post")
    assert acts.shape == (3, 5, 32)
    assert torch.allclose(host.run_from(state, acts.repeat(2, 1, 1))[3:], ref, atol=1e-5)
    assert host.logit_scale == pytest.approx(100.0, rel=1e-3)
    assert host.text_embeddings(["ab", "c"]).shape == (2, 16)
    with pytest.raises(SaevalError, match="tokenise to nothing"):
        host.text_embeddings([""])


def test_steer_clip_command_loads_saved_model(tiny_clip, tmp_path):
    """The CLI path end to end: a CLIPModel folder loaded by path, an SAE folder, results JSON."""
    from saeval.saes.formats import save_sae

    tiny_clip.model.save_pretrained(tmp_path / "clip")
    tiny_clip.backend.tokenizer.save_pretrained(tmp_path / "clip")
    save_sae(_random_sae(32, 3), tmp_path / "sae")
    reloaded = CLIPHost.load(str(tmp_path / "clip"))
    pixels = reloaded.preprocess(load_images("fashion-mnist", 3))
    assert torch.allclose(reloaded.image_embeddings(pixels), tiny_clip.image_embeddings(pixels), atol=1e-5)
    from typer.testing import CliRunner

    from saeval.cli import app

    args = ["--sae", str(tmp_path / "sae"), "--model", str(tmp_path / "clip"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["steer-clip", *args, "--preset", "tiny", "--images", "fashion-mnist"])
    assert result.exit_code == 0, result.output
    rec = json.loads((tmp_path / "out" / "sae" / "steerability.json").read_text())
    assert rec["details"]["host"] == "clip" and rec["details"]["softmax_scale"] == 100.0
    assert rec["metrics"]["n_latents"] == 8 and rec["details"]["n_inputs"] == 4
    with pytest.raises(SaevalError, match="cannot load CLIP model"):
        CLIPHost.load(str(tmp_path / "sae"))
