"""saeval's core eval against SAELens's own eval code (``sae_lens.evals.run_evals``): one tiny random Llama held
both as the Hugging Face model saeval runs and as the TransformerLens model SAELens runs, one SAE in both
libraries, the same token batches. Every core metric both compute must agree to 1e-5.

The models run in float64 (the SAEs in float32, in both libraries): in float32 TransformerLens and Hugging Face
forwards differ by ~1e-6 in CE, which the CE score, a ratio of CE differences as small as 0.08 here, inflates
past 1e-5. What remains is float32 rounding of the SAE and of saeval's log-softmax (~1e-7), and of SAELens's
float32 mean of per-token L0 counts (~4e-6 on an L0 of ~80)."""

from __future__ import annotations

import tempfile

import pytest
import torch

pytest.importorskip("sae_lens")
pytest.importorskip("transformer_lens")

from saeval.data.corpora import load_contexts  # noqa: E402
from saeval.evals import EvalContext  # noqa: E402
from saeval.evals.core import SPEC  # noqa: E402
from saeval.saes.formats.saelens import from_saelens_dict  # noqa: E402

N_TOKENS, CTX_LEN, BATCH = 512, 32, 2  # 16 contexts in 8 batches: per-batch statistics see several batches
TOL = 1e-5
MODEL_DTYPE = torch.float64
EMBED_GAIN, UNEMBED_GAIN, MLP_GAIN = 5.0, 15.0, 30.0
ENC_SCALE = {"standard": 0.5, "topk": 1.0}  # explained variance ~0.6 and ~0.2 at blocks.1.hook_resid_post

# Scalar metrics both compute, under the same names (SAELens's run_evals output, flattened).
SHARED = ["l0", "l1", "mse", "explained_variance", "explained_variance_legacy", "cossim", "l2_norm_in",
          "l2_norm_out", "l2_ratio", "relative_reconstruction_bias", "ce_loss_without_sae", "ce_loss_with_sae",
          "ce_loss_with_ablation", "ce_loss_score", "kl_div_with_sae", "kl_div_with_ablation", "kl_div_score"]


def _hooked_transformer(hf_model, tokenizer):
    """The same weights in TransformerLens, offline: its config converter reads a local config.json folder
    (HookedTransformer.from_pretrained accepts only official hub names), the weight converter the HF model.
    No weight processing (LN folding, centring) so that activations at the hook are the HF model's."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    folder = tempfile.mkdtemp(prefix="tiny-hf-")  # the name must not contain "llama" (TL matches on names)
    hf_model.config.architectures = [type(hf_model).__name__]
    hf_model.config.save_pretrained(folder)
    cfg = loading.get_pretrained_model_config(folder, hf_cfg=hf_model.config.to_dict(), device="cpu",
                                              dtype=hf_model.dtype)
    state = loading.get_pretrained_state_dict(folder, cfg, hf_model)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    return model.eval()


@pytest.fixture(scope="module")
def hosts(smollm2_tokenizer):
    return tiny_hosts(smollm2_tokenizer)


def tiny_hosts(tokenizer):
    """A random 3-layer Llama like conftest's tiny host, in saeval (Hugging Face) and in TransformerLens. Larger
    (untied) embedding and unembedding weights make next-token distributions far from uniform, so CE and KL
    terms are large; a larger layer-1 MLP output makes zero-ablating it matter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from saeval.hosts import LanguageHost

    torch.manual_seed(3)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    hf_model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        hf_model.model.embed_tokens.weight.mul_(EMBED_GAIN)
        hf_model.lm_head.weight.mul_(UNEMBED_GAIN)
        hf_model.model.layers[1].mlp.down_proj.weight.mul_(MLP_GAIN)
    host = LanguageHost(hf_model.to(MODEL_DTYPE), tokenizer, "tiny-llama-3x64-saelens")
    return host, _hooked_transformer(host.model, tokenizer)


def _sae_pair(arch: str, hook: str, d_in: int, d_sae: int = 256):
    """A SAELens SAE with random weights that reconstruct roughly (decoder rows = encoder columns), and the
    saeval SAE converted from its config and state dict."""
    from sae_lens import SAE

    g = torch.Generator().manual_seed(0)
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "metadata": {"hook_name": hook}}
    if arch == "topk":
        cfg["k"] = 16
    sl = SAE.from_dict(cfg)
    with torch.no_grad():
        W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
        sl.W_dec.copy_(W_dec)
        sl.W_enc.copy_(W_dec.T * ENC_SCALE[arch])
        sl.b_enc.copy_(-0.05 * torch.rand(d_sae, generator=g))
        sl.b_dec.copy_(0.01 * torch.randn(d_in, generator=g))
    ours = from_saelens_dict(sl.cfg.to_dict(), sl.state_dict(), f"SAELens {arch}")
    return sl.eval(), ours


class _Batches:
    """The part of SAELens's ActivationsStore that ``run_evals`` reads: fixed batches of contexts, replayed
    from the start on every pass (it resets the store between the CE/KL and the sparsity/variance passes)."""

    def __init__(self, contexts_NL: torch.Tensor, batch_size: int):
        self.contexts_NL, self.store_batch_size_prompts = contexts_NL, batch_size
        self.context_size = contexts_NL.shape[1]
        self.start = 0

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        batch = self.contexts_NL[self.start : self.start + n]
        assert len(batch) == n, "SAELens asked for more batches than the contexts hold"
        self.start += n
        return batch

    def reset_input_dataset(self) -> None:
        self.start = 0


def saelens_metrics(model, sl_sae, contexts_NL: torch.Tensor, batch_size: int) -> dict[str, float]:
    """SAELens's scalar core metrics (run_evals with every metric on, its default special-token exclusion)."""
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    n_batches = len(contexts_NL) // batch_size
    config = get_eval_everything_config(batch_size_prompts=batch_size, n_eval_reconstruction_batches=n_batches,
                                        n_eval_sparsity_variance_batches=n_batches)
    nested, _ = run_evals(sl_sae, _Batches(contexts_NL, batch_size), model, ActivationScaler(), config)
    return {k: v for group in nested.values() for k, v in group.items()}


def saeval_metrics(host, sae, hook: str, **overrides) -> dict[str, float]:
    cfg = SPEC.config("tiny", n_eval_tokens=N_TOKENS, n_density_tokens=N_TOKENS, ctx_len=CTX_LEN,
                      batch_size=BATCH, **overrides)
    result = SPEC.run_fn()(EvalContext(host=host, hook=hook, ctx_len=CTX_LEN, preset="tiny"), sae, cfg)
    return result.metrics.model_dump()


def differences(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    return {k: abs(ours[k] - theirs[k]) for k in SHARED}


@pytest.fixture(scope="module")
def contexts(hosts):
    host, model = hosts
    contexts = load_contexts(host, "sotu", N_TOKENS, CTX_LEN, 0)
    # saeval's special tokens are the tokenizer's all_special_ids, SAELens's only its BOS/EOS/PAD/SEP ids:
    # on this text both exclude the same positions (here the BOS of every context), so the masks agree.
    from sae_lens.util import get_special_token_ids

    theirs = ~torch.isin(contexts, torch.tensor(get_special_token_ids(model.tokenizer)))
    assert torch.equal(host.ordinary_mask(contexts), theirs) and not theirs.all()
    return contexts


# This Llama has no biases: zeroing its residual at every position zeroes everything after it, so the default
# zero-ablated run is exactly uniform there (CE ln V). The mlp_out hook keeps the residual, and so checks the
# zero-ablated run beyond that (and saeval's full-forward path for hooks inside a block).
@pytest.mark.parametrize("arch, hook", [("standard", "blocks.1.hook_resid_post"), ("topk", "blocks.1.hook_resid_post"),
                                        ("standard", "blocks.1.hook_mlp_out")])
def test_core_matches_saelens(hosts, contexts, arch, hook):
    host, model = hosts
    sl_sae, sae = _sae_pair(arch, hook, host.d_model)
    theirs = saelens_metrics(model, sl_sae, contexts, BATCH)
    ours = saeval_metrics(host, sae, hook)
    diff = differences(ours, theirs)
    assert max(diff.values()) < TOL, {k: v for k, v in diff.items() if v >= TOL}
    # Not a vacuous match: the SAE changes the model's outputs, zero-ablation changes them far more. (The random
    # model predicts worse than uniform, so the CE score need not lie in [0, 1].)
    assert ours["kl_div_with_sae"] > 1e-2 and 0.05 < ours["kl_div_score"] < 0.95
    assert abs(ours["ce_loss_with_ablation"] - ours["ce_loss_without_sae"]) > 1e3 * TOL
    # ... and the settings matter here: saeval's former semantics (zeros at ordinary positions only, KL without
    # the last position, one global bias ratio) miss SAELens by far more than the tolerance.
    former = saeval_metrics(host, sae, hook, zero_ablation_positions="ordinary", kl_positions="with_next_token")
    far = differences(former, theirs)
    assert min(far[k] for k in ("ce_loss_with_ablation", "kl_div_with_sae", "kl_div_with_ablation")) > 10 * TOL
    assert abs(ours["relative_reconstruction_bias_global"] - theirs["relative_reconstruction_bias"]) > 10 * TOL
    for same in ("ce_loss_without_sae", "ce_loss_with_sae", "l0", "mse"):  # untouched by those settings
        assert former[same] == pytest.approx(ours[same], rel=1e-12)
