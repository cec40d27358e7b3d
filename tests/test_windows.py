"""Top activated windows: the streaming pass equals a brute-force NumPy ranking; planted and dead latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeval.analysis.windows import (
    SharedCapture,
    collect_windows,
    pick_active_latents,
    shared_host,
    top_activated_windows,
)
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.saes.base import SAEConfig, create_sae

HOOK = "blocks.1.hook_resid_post"


def random_relu_sae(host, contexts, d_sae=24, seed=0, fire=0.1):
    """A ReLU SAE whose latents fire on about ``fire`` of the tokens (thresholds set from the data)."""
    g = torch.Generator().manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="relu", d_in=host.d_model, d_sae=d_sae, hook_name=HOOK,
                               apply_b_dec_to_input=False, name="rand"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(host.d_model, d_sae, generator=g))
        sae.W_dec.copy_(torch.randn(d_sae, host.d_model, generator=g))
        acts = host.capture(contexts, [HOOK])[HOOK]
        pre = acts[host.ordinary_mask(contexts)] @ sae.W_enc
        sae.b_enc.copy_(-pre.quantile(1 - fire, dim=0))
    return sae


@pytest.fixture(scope="module")
def setup(tiny_host):
    contexts = load_contexts(tiny_host, "sotu", 24 * 64, ctx_len=64, seed=3)
    return tiny_host, contexts, random_relu_sae(tiny_host, contexts)


def brute_force(host, sae, contexts, feats, window):
    """Per-window scores, the windows' activations [windows, window, feats] and every token's [B, L, feats]."""
    acts = host.capture(contexts, [HOOK])[HOOK]
    f_BLF = (sae.encode(acts)[..., feats] * host.ordinary_mask(contexts)[..., None]).detach().numpy()
    n_w = (contexts.shape[1] - 1) // window
    f = f_BLF[:, 1 : 1 + n_w * window].reshape(len(contexts) * n_w, window, len(feats))
    return {"mean": f.mean(1), "max": f.max(1), "density": (f > 0).mean(1)}, f, f_BLF


def test_streaming_top_windows_equal_brute_force(setup):
    host, contexts, sae = setup
    # Special tokens inside some windows (an EOS between documents) must not count for any criterion.
    contexts = contexts.clone()
    contexts[::3, 17] = host.tokenizer.eos_token_id
    assert not host.ordinary_mask(contexts)[:, 1:].all()
    feats = [0, 3, 7, 11, 20]
    res = top_activated_windows(host, sae, feats, window=10, contexts_NL=contexts, k=5, batch_size=5)
    scores, f, all_f = brute_force(host, sae, contexts, feats, 10)
    for j, latent in enumerate(feats):
        lw = res.latents[latent]
        assert lw.fired and lw.n_active_windows == int((f[:, :, j].max(1) > 0).sum())
        assert lw.n_active_tokens == int((all_f[..., j] > 0).sum())
        for crit in ("mean", "max", "density"):
            got = [ex.score for ex in lw.criterion(crit)]
            want = np.sort(scores[crit][:, j][f[:, :, j].max(1) > 0])[::-1][:5]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        for ex in lw.max:  # the example's tokens/acts are the window it names
            wid = res.window_id(ex)
            assert ex.tokens == contexts[ex.context, ex.start : ex.start + 10].tolist()
            np.testing.assert_allclose(ex.acts, f[wid, :, j], rtol=1e-4, atol=1e-5)
            assert len(ex.texts) == 10 and "".join(ex.texts) == host.tokenizer.decode(ex.tokens)


def test_planted_token_latent_and_dead_latent(tiny_host):
    """At blocks.0.hook_resid_pre the residual is the token embedding: a latent reading one token's embedding
    fires exactly on that token, so its densest windows are those with most copies of it."""
    hook = "blocks.0.hook_resid_pre"
    contexts = load_contexts(tiny_host, "sotu", 16 * 64, ctx_len=64, seed=5)
    the = tiny_host.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    emb = tiny_host.model.get_input_embeddings().weight.detach()
    sae = create_sae(SAEConfig(architecture="relu", d_in=tiny_host.d_model, d_sae=4, hook_name=hook,
                               apply_b_dec_to_input=False))
    with torch.no_grad():
        e = emb[the] / emb[the].norm()
        sae.W_enc[:, 0] = e
        others = (emb @ e).clone()
        others[the] = -1e9
        sae.b_enc[0] = -(others.max() + (emb[the] @ e)) / 2  # halfway between " the" and the next closest token
        sae.b_enc[1] = -1e6  # never fires
    res = top_activated_windows(tiny_host, sae, [0, 1], window=9, contexts_NL=contexts, k=4)
    counts = np.array([(contexts[i, 1 + w * 9 : 1 + (w + 1) * 9] == the).sum().item()
                       for i in range(len(contexts)) for w in range(7)])
    assert res.latents[0].n_active_tokens == int((contexts[:, 1 : 1 + 63] == the).sum())
    for ex in res.latents[0].density:
        assert all((a > 0) == (t == the) for a, t in zip(ex.acts, ex.tokens, strict=True))
    assert [ex.score * 9 for ex in res.latents[0].density] == pytest.approx(sorted(counts)[::-1][:4])
    assert res.never_fired == [1] and res.latents[1].max == [] and not res.latents[1].fired


def test_reservoir_and_pool_are_consistent(setup):
    host, contexts, sae = setup
    feats = [1, 2]
    res = collect_windows(host, [(sae, feats)], contexts, HOOK, window=10, k=3, batch_size=6, reservoir=8,
                          n_pool=20, seed=1)[0]
    scores, f, _ = brute_force(host, sae, contexts, feats, 10)
    for j, latent in enumerate(feats):
        ids = [w for w, _ in res.reservoir[latent]]
        active = set(np.nonzero(f[:, :, j].max(1) > 0)[0].tolist())
        assert len(ids) == len(set(ids)) == min(8, len(active)) and set(ids) <= active
        for w, m in res.reservoir[latent]:
            assert m == pytest.approx(scores["max"][w, j], rel=1e-5)
        np.testing.assert_allclose(res.pool_max[latent], scores["max"][res.pool_ids, j], rtol=1e-5, atol=1e-6)
    again = collect_windows(host, [(sae, feats)], contexts, HOOK, window=10, k=3, batch_size=6, reservoir=8,
                            n_pool=20, seed=1)[0]
    assert again.reservoir == res.reservoir  # seeded


def test_latents_drawn_among_those_with_enough_windows(setup):
    """The pass counts every latent's activating windows (as the brute force does); the draw keeps only latents
    with at least the minimum, puts the preferred eligible ones first, is seeded, and returns all the eligible
    ones when fewer than asked."""
    host, contexts, sae = setup
    every = list(range(sae.d_sae))
    res = collect_windows(host, [(sae, every)], contexts, HOOK, window=10, k=3, batch_size=6)[0]
    _, f, _ = brute_force(host, sae, contexts, every, 10)
    counts = (f.max(1) > 0).sum(0)
    assert [res.active_windows[j] for j in every] == counts.tolist()
    need = int(np.median(counts)) + 1
    eligible = {j for j in every if counts[j] >= need}
    assert 4 <= len(eligible) < len(every)
    low = min(every, key=lambda j: counts[j])  # below the bar: never drawn, even when preferred
    pick = pick_active_latents(res, 3, need, seed=0, prefer=[low, max(eligible)])
    assert len(pick) == 3 and set(pick) <= eligible and max(eligible) in pick and low not in pick
    assert pick == pick_active_latents(res, 3, need, seed=0, prefer=[low, max(eligible)]) == sorted(pick)
    draws = {tuple(pick_active_latents(res, 2, need, seed=s)) for s in range(12)}
    assert len(draws) > 1 and all(set(d) <= eligible for d in draws)
    assert pick_active_latents(res, 100, need, seed=0) == sorted(eligible)


def test_shared_capture_serves_a_second_pass_from_the_memo(setup):
    """A second SAE's pass over the same contexts reads the hook's activations from the memo (no forward) and
    gives the same records; other hooks and large contexts go to the host."""
    host, contexts, sae = setup
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(host, name)

        def capture(self, tokens, hooks, *args, **kwargs):
            calls.append(list(hooks))
            return host.capture(tokens, hooks, *args, **kwargs)

    memo: dict = {}
    counting = Counting()
    first = collect_windows(shared_host(counting, HOOK, contexts, memo), [(sae, [1, 2])], contexts, HOOK, window=10,
                            k=3, batch_size=6, reservoir=8, n_pool=20, seed=1)[0]
    n = len(calls)
    assert n == -(-len(contexts) // 6)  # one forward per batch of 6 contexts
    again = collect_windows(shared_host(counting, HOOK, contexts, memo), [(sae, [1, 2])], contexts, HOOK, window=10,
                            k=3, batch_size=6, reservoir=8, n_pool=20, seed=1)[0]
    assert len(calls) == n and again.reservoir == first.reservoir
    assert again.latents[1].max == first.latents[1].max
    plain = collect_windows(host, [(sae, [1, 2])], contexts, HOOK, window=10, k=3, batch_size=6, reservoir=8,
                            n_pool=20, seed=1)[0]
    assert plain.latents[2].max == first.latents[2].max
    shared = shared_host(counting, HOOK, contexts, memo)
    assert isinstance(shared, SharedCapture)
    shared.capture(contexts[:6], ["blocks.0.hook_resid_pre"])
    assert len(calls) == n + 1  # another hook: a forward
    assert shared_host(host, HOOK, contexts, None) is host


def test_bad_inputs(setup):
    host, contexts, sae = setup
    with pytest.raises(SaevalError, match="longer than the contexts"):
        top_activated_windows(host, sae, [0], window=64, contexts_NL=contexts)
    with pytest.raises(SaevalError, match="out of range"):
        top_activated_windows(host, sae, [24], window=8, contexts_NL=contexts)
    with pytest.raises(SaevalError, match="longer than the contexts"):
        top_activated_windows(host, sae, [0], window=200, ctx_len=128)
