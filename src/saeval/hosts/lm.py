"""A Hugging Face causal LM with TransformerLens-named hook points.

Capture (with early stop after the last needed block), interventions (replace or edit an activation by a
function), running the model from a hook onward (for whole sequences, or for the last position only with the
earlier ones cached), logits of a few vocabulary rows, and batched generation with interventions active.
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicCache, DynamicLayer

from saeval.errors import SaevalError
from saeval.hosts.hooks import (
    ArchLayout,
    HookPoint,
    get_attr,
    layout_for,
    parse_hook,
    resolve,
    valid_hook_names,
)

Intervention = Callable[[Tensor], Tensor]
"""Maps the activation at a hook (acts_BLD) to the activation the model continues with."""

# Where each kind of hook sits inside its block, in forward order (LanguageHost.hook_position).
_HOOK_ORDER = {"hook_resid_pre": 0, "hook_attn_out": 1, "hook_mlp_out": 2, "hook_resid_post": 3}
EMBEDDED_MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct (packaged GGUF, converted once to fp32 safetensors)"}


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once every needed activation is in hand."""


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@dataclass
class PrefixState:
    """Everything a decoder block needs besides its hidden state, captured once so that later passes can
    start at ``start_block`` (e.g. one per steering strength) without recomputing the layers before it."""

    tokens_BL: Tensor
    attention_mask_BL: Tensor | None
    start_block: int
    hook: HookPoint
    block_args: tuple = ()
    block_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LastPositionState:
    """One prompt prepared by :meth:`LanguageHost.prefix_last`: ``block_inputs`` holds what each block from
    ``start_block`` on is called with besides its hidden state, the KV cache of positions 0..L-2 among them.
    ``start_block`` -1: nothing cached, every call is a full forward; n_layers: the hook is the final residual."""

    tokens_1L: Tensor
    hook: HookPoint
    start_block: int
    block_inputs: list[tuple[tuple, dict[str, Any]]] = field(default_factory=list)


class LanguageHost:
    """A causal LM whose activations are addressed by TransformerLens hook names."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.config = model.config
        self.layout: ArchLayout = layout_for(model.config.model_type)
        self.blocks: nn.ModuleList = get_attr(model, self.layout.layers)  # type: ignore[assignment]
        self.n_layers = len(self.blocks)
        self.d_model = int(model.config.hidden_size)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if bos is None:
            raise SaevalError(f"tokenizer of {name} has neither a BOS nor an EOS token to start contexts with")
        self.bos_id = int(bos)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.bos_id)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LanguageHost:
        path: Path | str = name_or_path
        if name_or_path in EMBEDDED_MODELS:
            path = _embedded_smollm2_dir()
        elif Path(name_or_path).exists():
            path = Path(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as err:
            raise SaevalError(
                f"cannot load model {name_or_path!r} ({str(err).splitlines()[0]}); give a local HF folder, a hub id "
                f"with network access, or one of {list(EMBEDDED_MODELS)}"
            ) from err
        return cls(model.to(device), tokenizer, str(name_or_path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def final_norm(self) -> nn.Module:
        """The norm between the last block's residual and the unembedding."""
        return get_attr(self.model, self.layout.final_norm)

    def fingerprint(self) -> str:
        """A content hash of the weights, the architecture config and the tokenizer's vocabulary, so caches
        and results are keyed by what the model is rather than by its name. Computed once per host."""
        if getattr(self, "_fingerprint", None) is None:
            from saeval.hashing import module_fingerprint, text_digest

            vocab = json.dumps(sorted(self.tokenizer.get_vocab().items()), separators=(",", ":"))
            parts = [module_fingerprint(self.model), text_digest(self.model.config.to_json_string()),
                     text_digest(vocab), text_digest(json.dumps(self.tokenizer.all_special_ids))]
            self._fingerprint = text_digest("|".join(parts))
        return self._fingerprint

    # ------------------------------------------------------------------ hook names
    def hook(self, name: str) -> HookPoint:
        return parse_hook(name, self.n_layers)

    def hook_names(self) -> list[str]:
        return valid_hook_names(self.n_layers)

    def ordinary_mask(self, tokens_BL: Tensor, attention_mask_BL: Tensor | None = None) -> Tensor:
        """True where the token is not special (BOS/EOS/PAD...) and not padding: the positions statistics use."""
        mask = ~torch.isin(tokens_BL, self.special_ids.to(tokens_BL.device))
        if attention_mask_BL is not None:
            mask &= attention_mask_BL.bool()
        return mask

    # ------------------------------------------------------------------ hooks
    @contextmanager
    def hooks(
        self,
        interventions: dict[str, Intervention] | None = None,
        captures: dict[str, list[Tensor]] | None = None,
        stop_after: str | None = None,
    ) -> Iterator[None]:
        """Install interventions (applied first) and captures (recording the value the model continues with).

        ``stop_after``: raise _StopForward once that hook has fired (callers catch it)."""
        interventions = interventions or {}
        captures = captures if captures is not None else {}
        handles = []
        for name in {*interventions, *captures}:
            point = self.hook(name)
            site = resolve(self.model, self.layout, point)
            fn = interventions.get(name)
            store = captures.get(name)
            stop = stop_after == name

            def transform(acts: Tensor, fn=fn, store=store, stop=stop) -> Tensor:
                if fn is not None:
                    acts = fn(acts)
                if store is not None:
                    store.append(acts)
                if stop:
                    raise _StopForward
                return acts

            if site.side == "output":

                def out_hook(_m, _inp, output, transform=transform):
                    return _with_hidden(output, transform(_hidden(output)))

                handles.append(site.module.register_forward_hook(out_hook))
            else:

                def pre_hook(_m, args, kwargs, transform=transform):
                    if args:
                        return (transform(args[0]), *args[1:]), kwargs
                    kwargs = dict(kwargs)
                    kwargs["hidden_states"] = transform(kwargs["hidden_states"])
                    return args, kwargs

                handles.append(site.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def hook_position(self, name: str) -> tuple[int, int]:
        """Sort key of a hook in the forward pass: where its activation is produced (resid_pre of block l comes
        before anything inside block l, resid_post after)."""
        point = self.hook(name)
        return point.layer, _HOOK_ORDER[point.kind]

    def _last_hook(self, names: Sequence[str]) -> str:
        return max(names, key=self.hook_position)

    # ------------------------------------------------------------------ forward passes
    @torch.inference_mode()
    def capture(
        self,
        tokens_BL: Tensor,
        hooks: Sequence[str],
        attention_mask_BL: Tensor | None = None,
        interventions: dict[str, Intervention] | None = None,
    ) -> dict[str, Tensor]:
        """Activations at ``hooks``; the forward stops right after the last one (no wasted layers)."""
        captures: dict[str, list[Tensor]] = {name: [] for name in hooks}
        with self.hooks(interventions, captures, stop_after=self._last_hook(hooks)):
            try:
                self.model(input_ids=tokens_BL.to(self.device), attention_mask=_mask(attention_mask_BL, self.device),
                           use_cache=False)
            except _StopForward:
                pass
        return {name: values[0] for name, values in captures.items()}

    @torch.inference_mode()
    def forward(
        self,
        tokens_BL: Tensor,
        attention_mask_BL: Tensor | None = None,
        interventions: dict[str, Intervention] | None = None,
        captures: dict[str, list[Tensor]] | None = None,
    ) -> Tensor:
        """Full forward pass; returns logits_BLV."""
        with self.hooks(interventions, captures):
            out = self.model(
                input_ids=tokens_BL.to(self.device), attention_mask=_mask(attention_mask_BL, self.device),
                use_cache=False,
            )
        return out.logits

    @torch.inference_mode()
    def prefix(
        self, tokens_BL: Tensor, hook: str, attention_mask_BL: Tensor | None = None
    ) -> tuple[Tensor, PrefixState]:
        """Run up to ``hook``; return its activation and the state needed to continue from there."""
        point = self.hook(hook)
        start = point.layer if point.kind == "hook_resid_pre" else point.layer + 1
        inside_block = point.kind not in ("hook_resid_pre", "hook_resid_post")
        if inside_block or self.config.model_type in ("gemma2", "gemma3_text"):
            # attn/mlp outputs sit inside a block and Gemma2/3 give each layer its own mask: continue with a full pass.
            acts = self.capture(tokens_BL, [hook], attention_mask_BL)[hook]
            return acts, PrefixState(tokens_BL, attention_mask_BL, -1, point)
        state = PrefixState(tokens_BL, attention_mask_BL, start, point)
        if start >= self.n_layers:
            return self.capture(tokens_BL, [hook], attention_mask_BL)[hook], state
        captured: list[Tensor] = []

        def grab(_m, args, kwargs):
            state.block_args, state.block_kwargs = tuple(args[1:]), dict(kwargs)
            raise _StopForward

        # One pass: the capture hook fires first (registered first), then ``grab`` at the next block stops it.
        with self.hooks(captures={hook: captured}):
            handle = self.blocks[start].register_forward_pre_hook(grab, with_kwargs=True)
            try:
                self.model(input_ids=tokens_BL.to(self.device), attention_mask=_mask(attention_mask_BL, self.device),
                           use_cache=False)
            except _StopForward:
                pass
            finally:
                handle.remove()
        state.block_kwargs.pop("hidden_states", None)
        acts = captured[0]
        return acts, state

    @torch.inference_mode()
    def run_from(self, state: PrefixState, acts_BLD: Tensor) -> Tensor:
        """Logits when the activation at ``state.hook`` is replaced by ``acts_BLD``.

        ``acts_BLD`` may stack several variants per input (batch = k * B, inputs repeated in blocks of B as
        produced by ``acts.repeat(k, 1, 1)``); the captured block inputs are tiled to match."""
        if state.start_block < 0:
            tokens = state.tokens_BL.repeat(acts_BLD.shape[0] // state.tokens_BL.shape[0], 1)
            mask = None if state.attention_mask_BL is None else state.attention_mask_BL.repeat(
                acts_BLD.shape[0] // state.tokens_BL.shape[0], 1)
            return self.forward(tokens, mask, interventions={state.hook.name: lambda _a: acts_BLD.to(_a.dtype)})
        return self.logits_from_residual(self.residual_from(state, acts_BLD))

    @torch.inference_mode()
    def residual_from(self, state: PrefixState, acts_BLD: Tensor) -> Tensor:
        """Like ``run_from`` but returns the last block's output (before the final norm), so a caller that
        needs few positions or few vocabulary rows can skip the full unembedding."""
        if state.start_block < 0:
            reps = acts_BLD.shape[0] // state.tokens_BL.shape[0]
            mask = None if state.attention_mask_BL is None else state.attention_mask_BL.repeat(reps, 1)
            last = f"blocks.{self.n_layers - 1}.hook_resid_post"
            return self.capture(state.tokens_BL.repeat(reps, 1), [last], mask,
                                interventions={state.hook.name: lambda _a: acts_BLD.to(_a.dtype)})[last]
        reps = acts_BLD.shape[0] // state.tokens_BL.shape[0]
        B = state.tokens_BL.shape[0]
        args = tuple(_tile(a, B, reps) for a in state.block_args)
        kwargs = {k: _tile(v, B, reps) for k, v in state.block_kwargs.items()}
        hidden = acts_BLD.to(self.device)
        for block in self.blocks[state.start_block:]:
            hidden = _hidden(block(hidden, *args, **kwargs))
        return hidden

    def logits_from_residual(self, resid_BLD: Tensor) -> Tensor:
        """Final norm, unembedding and (Gemma-2) logit soft-capping of a last-block residual: logits_BLV."""
        logits = self.model.get_output_embeddings()(self.final_norm(resid_BLD))
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # ------------------------------------------------------------------ a few vocabulary rows
    def unembedding_rows_VD(self, token_ids_V: Sequence[int] | Tensor) -> tuple[Tensor, Tensor | None]:
        """The unembedding's rows for ``token_ids_V`` ([V, D], float32) and their bias ([V], None when the head
        has none): gathered once, they give those tokens' logits through :meth:`vocab_logits_BLV`."""
        head = self.model.get_output_embeddings()
        ids_V = torch.as_tensor(token_ids_V, dtype=torch.long, device=head.weight.device)
        W_VD = head.weight[ids_V].float()
        b_V = head.bias[ids_V].float() if getattr(head, "bias", None) is not None else None
        return W_VD, b_V

    def vocab_logits_BLV(self, resid_BLD: Tensor, W_VD: Tensor, b_V: Tensor | None = None) -> Tensor:
        """``logits_from_residual(resid_BLD)[..., token_ids_V]`` (float32) for the rows ``unembedding_rows_VD``
        returned, without the full vocabulary's matmul: final norm, those rows, soft-capping."""
        logits = self.final_norm(resid_BLD).float() @ W_VD.T
        if b_V is not None:
            logits = logits + b_V
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    # ------------------------------------------------------------------ the last position only
    @torch.inference_mode()
    def prefix_last(self, tokens_1L: Tensor, hook: str, cached: bool = True) -> LastPositionState:
        """Prepare :meth:`final_residual_last_VD` for many replacements of the last position's activation at
        ``hook``. Causal attention never lets the last position change earlier ones, so positions 0..L-2 run
        once (keys and values kept) and each variant then costs one single-position pass through the blocks
        after the hook. Hooks inside a block (attn/mlp outputs), and ``cached=False``, use full forwards."""
        point = self.hook(hook)
        tokens = tokens_1L.to(self.device)
        if tokens.ndim != 2 or tokens.shape[0] != 1 or tokens.shape[1] < 2:
            raise SaevalError(f"prefix_last takes one prompt of at least 2 tokens [1, L], got {list(tokens.shape)}")
        residual = point.kind in ("hook_resid_pre", "hook_resid_post")
        start = point.layer if point.kind == "hook_resid_pre" else point.layer + 1
        if residual and start >= self.n_layers:
            return LastPositionState(tokens, point, self.n_layers)
        if not (cached and residual):
            return LastPositionState(tokens, point, -1)
        out = self.model(input_ids=tokens[:, :-1], use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            raise SaevalError(f"{self.name} returned no KV cache, which the cached last-position pass needs: "
                              "turn it off (cached=False; the synthetic eval's fast_path=false)")
        state = LastPositionState(tokens, point, start)

        def record(_m, args, kwargs):
            state.block_inputs.append((tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"}))

        # The last token runs through every block once, on a copy of the cache it extends, to record each
        # block's own inputs (Gemma-2/3 give each layer its own mask and rotary embeddings).
        scratch = copy.deepcopy(cache)
        handles = [block.register_forward_pre_hook(record, with_kwargs=True) for block in self.blocks[start:]]
        try:
            self.model(input_ids=tokens[:, -1:], use_cache=True, logits_to_keep=1,
                       **{_cache_kwarg(self.model): scratch})
        finally:
            for handle in handles:
                handle.remove()
        state.block_inputs = [_swap(inputs, scratch, cache) for inputs in state.block_inputs]
        from transformers.cache_utils import Cache

        if any(c is not cache for c in _find(state.block_inputs, Cache)):
            return LastPositionState(tokens, point, -1)  # the model rewrapped its cache: no safe reuse
        return state

    @torch.inference_mode()
    def final_residual_last_VD(self, state: LastPositionState, acts_VD: Tensor) -> Tensor:
        """The last block's output at the last position (TransformerLens ``blocks.{n-1}.hook_resid_post``,
        before the final norm; :meth:`logits_from_residual` turns it into logits) when the last position's
        activation at the state's hook is each row of ``acts_VD``: [V, D] in the model's dtype."""
        acts_VD = acts_VD.to(self.device, self.dtype)
        if state.start_block >= self.n_layers:
            return acts_VD
        if state.start_block < 0:
            def replace(acts_BLD: Tensor) -> Tensor:
                acts_BLD = acts_BLD.clone()
                acts_BLD[:, -1] = acts_VD.to(acts_BLD.dtype)
                return acts_BLD

            last = f"blocks.{self.n_layers - 1}.hook_resid_post"
            tokens = state.tokens_1L.repeat(len(acts_VD), 1)
            return self.capture(tokens, [last], interventions={state.hook.name: replace})[last][:, -1]
        from transformers.cache_utils import Cache

        V, tiled = len(acts_VD), {}

        def tile(value):
            if isinstance(value, Cache):  # a private copy per call: each block appends the new position to it
                if id(value) not in tiled:
                    tiled[id(value)] = copy.deepcopy(value)
                    tiled[id(value)].batch_repeat_interleave(V)
                return tiled[id(value)]
            if isinstance(value, tuple):
                return tuple(tile(v) for v in value)
            return value  # tensors here have batch 1 and broadcast over the variants

        hidden = acts_VD[:, None, :]
        for block, (args, kwargs) in zip(self.blocks[state.start_block:], state.block_inputs, strict=True):
            hidden = _hidden(block(hidden, *tile(args), **{k: tile(v) for k, v in kwargs.items()}))
        return hidden[:, 0]

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(
        self,
        input_ids_BL: Tensor,
        attention_mask_BL: Tensor | None = None,
        interventions: dict[str, Intervention] | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> Tensor:
        """Sample continuations (new tokens only, [B, <=max_new_tokens]) with interventions active.

        Prompts must be left-padded. Interventions see the prompt once (prefill) and then one new position
        per step; a function meant for prompt positions should act only when acts.shape[1] > 1."""
        # Sampling happens in a logits processor under greedy decoding (see _InverseCdfSampler): exact sampling
        # from softmax(logits / T) at a fraction of the per-step cost of HF's do_sample on CPU.
        processors = LogitsProcessorList([_InverseCdfSampler(temperature, seed)] if temperature > 0 else [])
        with self.hooks(interventions):
            out = self.model.generate(
                input_ids=input_ids_BL.to(self.device),
                attention_mask=_mask(attention_mask_BL, self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                logits_processor=processors,
                temperature=None,
                top_k=None,
                top_p=None,
                pad_token_id=self.pad_id,
            )
        return out[:, input_ids_BL.shape[1]:]

    @torch.inference_mode()
    def sample_unconditional(
        self,
        batch_size: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        seed: int = 0,
        stop_ids: Sequence[int] | Tensor | None = None,
    ) -> list[list[int]]:
        """``batch_size`` samples from a BOS prompt, each cut before its first stop token (default: the special
        tokens): the tokens ``generate`` would give for the same seed, cut there, at less cost per step.

        A decode loop of its own because unconditional sampling needs none of HF's generate machinery: every row
        has the same length and positions (no attention mask), the head runs on the last position only, no
        -inf scores are written for an argmax to undo, and a row that emits a stop token leaves the batch (its KV
        cache rows are dropped) instead of being computed to the end. The randomness does not depend on which
        rows left: each step draws one uniform for every row of the original batch, as generate's sampler does,
        so with no row stopped the uniforms, and so the samples, are generate's."""
        if max_new_tokens < 1:
            return [[] for _ in range(batch_size)]
        stop_S = self.special_ids if stop_ids is None else torch.as_tensor(stop_ids, dtype=torch.long)
        stop_S = stop_S.to(self.device)
        generator = torch.Generator().manual_seed(seed)
        out_BT = torch.zeros((batch_size, max_new_tokens), dtype=torch.long)
        length_B = torch.full((batch_size,), max_new_tokens, dtype=torch.long)
        active_A = torch.arange(batch_size)  # original row of each row still in the batch
        prompt_A1 = torch.full((batch_size, 1), self.bos_id, dtype=torch.long)
        logits_AV, cache = self._decode_step(prompt_A1, _preallocated_cache(self.model, 1 + max_new_tokens))
        for step in range(max_new_tokens):
            u_B1 = torch.rand((batch_size, 1), generator=generator, dtype=torch.float64) if temperature > 0 else None
            pick_A = _pick(logits_AV, temperature, None if u_B1 is None else u_B1[active_A])[:, 0]
            out_BT[active_A, step] = pick_A.cpu()
            keep_A = ~torch.isin(pick_A, stop_S).cpu()
            if not keep_A.all():
                length_B[active_A[~keep_A]] = step
                active_A, pick_A = active_A[keep_A], pick_A[keep_A.to(pick_A.device)]
                cache.batch_select_indices(keep_A.nonzero()[:, 0].to(self.device))
            if not len(active_A) or step + 1 == max_new_tokens:
                break
            logits_AV, cache = self._decode_step(pick_A[:, None], cache)
        return [row[:n].tolist() for row, n in zip(out_BT, length_B.tolist(), strict=True)]

    def _decode_step(self, tokens_A1: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """One position for every row (positions follow from the cache's length): last logits and the cache."""
        out = self.model(input_ids=tokens_A1.to(self.device), use_cache=True, logits_to_keep=1,
                         **{_cache_kwarg(self.model): cache})
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            raise SaevalError(f"{self.name} returned no KV cache, which sample_unconditional needs")
        return out.logits[:, -1].float(), cache


class _InverseCdfSampler(LogitsProcessor):
    """Turns greedy decoding into exact sampling from softmax(logits / T): one uniform per row is mapped through
    the cumulative distribution (sample_from_logits), and every other token's score is set to -inf so the
    argmax is the sample. HF's do_sample draws one exponential per vocabulary entry (torch.multinomial), and CPU random
    numbers cost more than the whole forward pass of a small model at 49k vocabulary entries. The generator is
    seeded once per call, so output is reproducible."""

    def __init__(self, temperature: float, seed: int):
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        pick_B1 = _pick(scores, self.temperature, generator=self.generator)
        out = torch.full_like(scores, -torch.inf)
        return out.scatter_(1, pick_B1, 0.0)  # type: ignore[return-value]


def _pick(logits_BV: Tensor, temperature: float, u_B1: Tensor | None = None,
          generator: torch.Generator | None = None) -> Tensor:
    """One token per row ([B, 1]): a sample from softmax(logits / T), or the argmax at temperature 0."""
    if temperature <= 0:
        return logits_BV.argmax(-1, keepdim=True)
    scaled_BV = logits_BV if temperature == 1.0 else logits_BV / temperature  # x / 1.0 is x: skip the pass
    return sample_from_logits(scaled_BV, generator, u_B1=u_B1)


class _PreallocatedLayer(DynamicLayer):
    """A KV cache layer that writes each step's keys and values into buffers allocated once for the whole sample.
    DynamicLayer concatenates, copying the whole cache at every step: at 128 rows x 127 positions on CPU that
    costs about a third of the step (~60 ms of ~280 ms at position 120). Keys and values are views of the buffers,
    so attention sees exactly the tensors DynamicLayer would give it."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        B, H, _, D = key_states.shape
        self.device = key_states.device
        self.key_buf_BHCD = key_states.new_empty((B, H, self.capacity, D))
        self.value_buf_BHCD = value_states.new_empty((B, H, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.key_buf_BHCD[:, :, self.length:end] = key_states
        self.value_buf_BHCD[:, :, self.length:end] = value_states
        self.length = end
        return self._views()

    def batch_select_indices(self, indices: Tensor) -> None:
        # Rows only leave: the kept ones move to the front of the same buffers. Indexing whole buffers instead
        # copies the unfilled positions too and allocates ~0.75 GB (128 rows x 128 positions of SmolLM2) at every
        # step where a row stops, which cost more than DynamicLayer's concatenation saved.
        if self.is_initialized:
            self.key_buf_BHCD = _keep_rows(self.key_buf_BHCD, indices, self.length)
            self.value_buf_BHCD = _keep_rows(self.value_buf_BHCD, indices, self.length)
            self._views()

    def _views(self) -> tuple[Tensor, Tensor]:
        self.keys = self.key_buf_BHCD[:, :, : self.length]
        self.values = self.value_buf_BHCD[:, :, : self.length]
        return self.keys, self.values


def _keep_rows(buf_BHCD: Tensor, indices_A: Tensor, length: int) -> Tensor:
    """The rows ``indices_A`` of a cache buffer, filled positions only, moved to its front (a view of it)."""
    A = len(indices_A)
    buf_BHCD[:A, :, :length] = buf_BHCD[indices_A, :, :length]  # the gather copies before the write
    return buf_BHCD[:A]


def _preallocated_cache(model: PreTrainedModel, capacity: int) -> DynamicCache:
    """The model's own DynamicCache (layer types from its config) with every plain full-attention layer
    preallocated for ``capacity`` positions; sliding-window and other layer kinds are kept as they are."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one width (on the right, or on the ``left`` for generation) and their attention mask."""
    width = max(map(len, rows))
    tokens_BL = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask_BL = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        tokens_BL[i, where] = torch.tensor(list(row), dtype=torch.long)
        mask_BL[i, where] = 1
    return tokens_BL, mask_BL


def sample_from_logits(logits_BV: Tensor, generator: torch.Generator | None, block: int = 256,
                       u_B1: Tensor | None = None) -> Tensor:
    """One token per row from softmax(logits), by inverse CDF with one uniform per row ([B, 1] indices).

    The uniforms are ``u_B1`` (float64 in [0, 1)) when given, else drawn from ``generator``: a caller that
    samples a shrinking subset of its rows passes theirs, so each row's draws do not depend on the others.
    The CDF is accumulated in float64 without a float64 pass over the whole vocabulary: first over block sums,
    then inside the chosen block."""
    B, V = logits_BV.shape
    p_BV = torch.softmax(logits_BV.float(), dim=-1)
    if V % block:
        p_BV = torch.nn.functional.pad(p_BV, (0, -V % block))
    p_BNK = p_BV.view(B, -1, block)
    # Block sums in float32 are accurate relative to each block's mass; the running total is float64.
    cdf_BN = p_BNK.sum(-1).double().cumsum(-1)
    if u_B1 is None:
        u_B1 = torch.rand((B, 1), generator=generator, dtype=torch.float64)
    u_B1 = u_B1.to(p_BV.device) * cdf_BN[:, -1:]
    blk_B1 = torch.searchsorted(cdf_BN, u_B1, right=True).clamp(max=cdf_BN.shape[1] - 1)
    before_B1 = torch.where(blk_B1 > 0, cdf_BN.gather(1, (blk_B1 - 1).clamp(min=0)), 0.0)
    inner_BK = p_BNK[torch.arange(B, device=p_BV.device), blk_B1[:, 0]].double().cumsum(-1)
    pos_B1 = torch.searchsorted(inner_BK, u_B1 - before_B1, right=True).clamp(max=block - 1)
    # Rounding can land on a zero-probability slot at the very end of a block: step back to the last live one.
    live_BK = p_BNK[torch.arange(B, device=p_BV.device), blk_B1[:, 0]] > 0
    last_live_B1 = (live_BK * torch.arange(1, block + 1, device=p_BV.device)).amax(-1, keepdim=True) - 1
    pos_B1 = torch.minimum(pos_B1, last_live_B1)
    return (blk_B1 * block + pos_B1).clamp(max=V - 1)


def _cache_kwarg(model: nn.Module) -> str:
    """The name the model's forward takes its KV cache under (``cache`` in recent transformers)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _swap(value: Any, old: Any, new: Any) -> Any:
    """``value`` with the object ``old`` replaced by ``new`` inside tuples, lists and dicts."""
    if value is old:
        return new
    if isinstance(value, tuple | list):
        return type(value)(_swap(v, old, new) for v in value)
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    return value


def _find(value: Any, kind: type) -> list[Any]:
    """Every instance of ``kind`` inside nested tuples, lists and dicts."""
    if isinstance(value, kind):
        return [value]
    if isinstance(value, tuple | list):
        return [found for v in value for found in _find(v, kind)]
    if isinstance(value, dict):
        return [found for v in value.values() for found in _find(v, kind)]
    return []


def _mask(mask: Tensor | None, device: torch.device) -> Tensor | None:
    return None if mask is None else mask.to(device)


def _tile(value: Any, batch: int, reps: int) -> Any:
    if reps == 1:
        return value
    if isinstance(value, tuple):
        return tuple(_tile(v, batch, reps) for v in value)
    if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[0] == batch and batch > 1:
        return value.repeat(reps, *([1] * (value.ndim - 1)))
    return value


def _embedded_smollm2_dir() -> Path:
    """Convert the packaged GGUF once into an fp32 safetensors folder (later loads take under a second)."""
    from saeval.assets import cache_dir, smollm2_gguf

    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = smollm2_gguf()
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"converted {gguf.name} to {target} in {time.time() - start:.0f}s")
    return target
