"""A CLIP model's vision tower with TransformerLens-named residual hooks, its image embedding readout, and
text embeddings of a vocabulary.

Backends: Hugging Face ``CLIPModel`` (hub id or local folder) and open_clip (``open_clip:MODEL[:PRETRAINED]``
or ``open_clip:hf-hub:ORG/NAME``, as used by ViT-Prisma for the steering paper). Hook names:
``blocks.{l}.hook_resid_pre`` (input of vision block l, after ``ln_pre``) and ``blocks.{l}.hook_resid_post``
(its output), as in HookedViT.
Running a tower segment reuses the library's own encoder loop on a slice of its blocks, so the layer call
conventions of each library version (tuples, token-first layouts) stay the library's business.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeval.data.images import preprocess_images
from saeval.data.vocab import check_tokenised
from saeval.errors import SaevalError
from saeval.hosts.hooks import HookPoint, parse_hook

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_PREFIXES = ("open_clip:", "open-clip:")
VISION_HOOK_KINDS = ("hook_resid_pre", "hook_resid_post")


class _Stop(Exception):
    """Ends a forward pass once the activation it was run for is in hand."""


@contextmanager
def _sliced(owner: nn.Module, attr: str, start: int, stop: int) -> Iterator[None]:
    """Temporarily replace ``owner.<attr>`` (a ModuleList of blocks) by its slice [start, stop)."""
    original = getattr(owner, attr)
    setattr(owner, attr, nn.ModuleList(list(original)[start:stop]))
    try:
        yield
    finally:
        setattr(owner, attr, original)


class _HFBackend:
    """transformers ``CLIPModel``: embeddings, pre_layrnorm, encoder.layers, post_layernorm(CLS), proj."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.vision = model.vision_model
        self.n_layers = len(self.vision.encoder.layers)
        self.width = int(model.config.vision_config.hidden_size)
        self.image_size = int(model.config.vision_config.image_size)
        self.logit_scale = float(model.logit_scale.detach().exp())

    def embed(self, pixels: Tensor) -> Tensor:
        return self.vision.pre_layrnorm(self.vision.embeddings(pixels))

    def run_blocks(self, x_BLD: Tensor, start: int, stop: int) -> Tensor:
        if start >= stop:
            return x_BLD
        with _sliced(self.vision.encoder, "layers", start, stop):
            out = self.vision.encoder(inputs_embeds=x_BLD)
        return out[0] if isinstance(out, tuple) else out.last_hidden_state

    def head(self, x_BLD: Tensor) -> Tensor:
        return self.model.visual_projection(self.vision.post_layernorm(x_BLD[:, 0]))

    def token_counts(self, words: Sequence[str]) -> list[int]:
        return [len(self.tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words]

    def encode_text(self, words: Sequence[str]) -> Tensor:
        cfg = self.model.config.text_config
        eos = cfg.eos_token_id
        max_len = int(cfg.max_position_embeddings)
        rows = []
        for w in words:
            ids = list(self.tokenizer(w)["input_ids"])
            # Since transformers PR 24773 the text tower pools at the first EOS (legacy eos id 2: at the
            # largest id); make sure a tokenizer that adds no EOS still gives a pooled position.
            if eos is not None and eos != 2 and eos not in ids:
                ids = ids[: max_len - 1] + [eos]
            rows.append(ids[:max_len])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos or 0)
        length = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], device=_device(self.model))
        mask = torch.tensor(
            [[1] * len(r) + [0] * (length - len(r)) for r in rows], device=_device(self.model)
        )
        out = self.model.text_model(input_ids=input_ids, attention_mask=mask)
        pooled = out[1] if isinstance(out, tuple) else out.pooler_output
        return self.model.text_projection(pooled)


class _OpenCLIPBackend:
    """open_clip ``CLIP``: visual.{conv1 ... ln_pre}, visual.transformer.resblocks, ln_post/pool, proj."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.visual = model.visual
        self.transformer = self.visual.transformer
        if getattr(self.visual, "attn_pool", None) is not None:
            raise SaevalError(
                "open_clip towers with attentional pooling (CoCa) are not supported: use a plain CLIP ViT"
            )
        self.n_layers = len(self.transformer.resblocks)
        self.width = int(self.transformer.width)
        size = self.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.logit_scale = float(model.logit_scale.detach().exp())
        # Old open_clip permutes to token-first before the transformer, newer ones pass batch-first: probe.
        self.batch_first = (
            self._transformer_input(torch.zeros(1, 3, self.image_size, self.image_size)).shape[0] == 1
        )

    def _transformer_input(self, pixels: Tensor) -> Tensor:
        seen: list[Tensor] = []

        def grab(_m, args):
            seen.append(args[0])
            raise _Stop

        handle = self.transformer.register_forward_pre_hook(grab)
        try:
            self.visual(pixels.to(_device(self.model)))
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen[0]

    def _to_bld(self, x: Tensor) -> Tensor:
        return x if self.batch_first else x.transpose(0, 1)

    def embed(self, pixels: Tensor) -> Tensor:
        return self._to_bld(self._transformer_input(pixels))

    def run_blocks(self, x_BLD: Tensor, start: int, stop: int) -> Tensor:
        if start >= stop:
            return x_BLD
        with _sliced(self.transformer, "resblocks", start, stop):
            return self._to_bld(self.transformer(self._to_bld(x_BLD)))

    def head(self, x_BLD: Tensor) -> Tensor:
        v = self.visual
        pool = getattr(v, "_global_pool", lambda x: (x[:, 0], x[:, 1:]))
        if getattr(v, "final_ln_after_pool", False):
            pooled = v.ln_post(pool(x_BLD)[0])
        else:
            pooled = pool(v.ln_post(x_BLD))[0]
        return pooled @ v.proj if v.proj is not None else pooled

    def token_counts(self, words: Sequence[str]) -> list[int]:
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:
            return [len(encode(w)) for w in words]
        # HF-backed open_clip tokenizers: count what is left besides start/end/padding.
        return [int((self.tokenizer([w])[0] != 0).sum()) - 2 for w in words]

    def encode_text(self, words: Sequence[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(list(words)).to(_device(self.model)))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class VisionPrefix:
    """Where a pass paused: ``start_block`` is the first block still to run (``n_layers``: only the head)."""

    batch: int
    start_block: int
    hook: HookPoint


class CLIPHost:
    """Vision tower of a CLIP model, addressed by hook names; readout = image embedding."""

    kind = "clip"

    def __init__(
        self,
        backend: _HFBackend | _OpenCLIPBackend,
        name: str,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ):
        self.backend = backend
        self.model = backend.model.eval().requires_grad_(False)
        self.name = name
        self.mean, self.std = tuple(mean), tuple(std)
        self.n_layers = backend.n_layers
        self.d_model = backend.width
        self.image_size = backend.image_size

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_hf(
        cls,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> CLIPHost:
        return cls(_HFBackend(model, tokenizer), name, mean, std)

    @classmethod
    def from_open_clip(cls, model: nn.Module, tokenizer: Any, name: str) -> CLIPHost:
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        return cls(
            _OpenCLIPBackend(model, tokenizer), name, cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD)
        )

    @classmethod
    def load(cls, name_or_path: str, device: str = "cpu") -> CLIPHost:
        """``open_clip:MODEL[:PRETRAINED]`` / ``open_clip:hf-hub:ORG/NAME``, else a CLIPModel id or folder."""
        if name_or_path.startswith(OPEN_CLIP_PREFIXES):
            return cls._load_open_clip(name_or_path.split(":", 1)[1], device)
        from transformers import AutoTokenizer, CLIPModel

        path = Path(name_or_path)
        try:
            source = str(path) if path.exists() else name_or_path
            model = CLIPModel.from_pretrained(source, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise SaevalError(
                f"cannot load CLIP model {name_or_path!r} ({str(err).splitlines()[0]}); give a local "
                "CLIPModel folder, a hub id with network access, or open_clip:MODEL[:PRETRAINED]"
            ) from err
        mean, std = CLIP_MEAN, CLIP_STD
        processor_cfg = path / "preprocessor_config.json"
        if processor_cfg.exists():
            cfg = json.loads(processor_cfg.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        model.to(device)  # type: ignore[arg-type]  # (in place for modules)
        return cls.from_hf(model, tokenizer, name_or_path, mean, std)

    @classmethod
    def _load_open_clip(cls, spec: str, device: str) -> CLIPHost:
        try:
            import open_clip
        except ImportError as err:
            raise SaevalError("open_clip models need open-clip-torch: pip install 'saeval[clip]'") from err
        model_name, pretrained = (
            (spec, None) if spec.startswith("hf-hub:") else (*spec.split(":", 1), None)[:2]
        )
        try:
            model, _, _ = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device
            )
        except (RuntimeError, OSError, ValueError) as err:
            raise SaevalError(f"cannot load open_clip model {spec!r} ({str(err).splitlines()[0]})") from err
        return cls.from_open_clip(model, open_clip.get_tokenizer(model_name), f"open_clip:{spec}")

    @property
    def device(self) -> torch.device:
        return _device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fingerprint(self) -> str:
        """Content hash of the weights (vision and text towers), so results are keyed by what the model is."""
        if getattr(self, "_fingerprint", None) is None:
            from saeval.hashing import module_fingerprint

            self._fingerprint = module_fingerprint(self.model)
        return self._fingerprint

    # ------------------------------------------------------------------ hooks
    def hook(self, name: str) -> HookPoint:
        point = parse_hook(name, self.n_layers)
        if point.kind not in VISION_HOOK_KINDS:
            raise SaevalError(
                f"CLIP vision hooks are blocks.{{l}}.hook_resid_pre / hook_resid_post, not {name!r}"
            )
        return point

    def hook_names(self) -> list[str]:
        return [f"blocks.{l}.{kind}" for l in range(self.n_layers) for kind in VISION_HOOK_KINDS]

    def _stop_block(self, point: HookPoint) -> int:
        """Number of blocks that run before the hook's activation exists."""
        return point.layer if point.kind == "hook_resid_pre" else point.layer + 1

    # ------------------------------------------------------------------ images
    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        return preprocess_images(images, self.image_size, self.mean, self.std).to(self.device)

    # ------------------------------------------------------------------ forward passes
    @torch.inference_mode()
    def prefix(self, pixels: Tensor, hook: str) -> tuple[Tensor, VisionPrefix]:
        """Run up to ``hook``; return its activation [B, L, D] and the state to continue from there."""
        point = self.hook(hook)
        stop = self._stop_block(point)
        x = self.backend.run_blocks(self.backend.embed(pixels.to(self.device)), 0, stop)
        return x, VisionPrefix(len(pixels), stop, point)

    @torch.inference_mode()
    def run_from(self, state: VisionPrefix, acts_BLD: Tensor) -> Tensor:
        """Image embeddings (unnormalised) when the hook's activation is ``acts_BLD``; the batch may stack
        several variants of the inputs (any multiple of the batch): the tower has no per-input state."""
        x = self.backend.run_blocks(acts_BLD.to(self.device), state.start_block, self.n_layers)
        return self.backend.head(x)

    @torch.inference_mode()
    def capture(self, pixels: Tensor, hooks: Sequence[str]) -> dict[str, Tensor]:
        """Activations at ``hooks``; blocks after the last one never run."""
        points = sorted((self._stop_block(self.hook(h)), h) for h in hooks)
        x, done, out = self.backend.embed(pixels.to(self.device)), 0, {}
        for stop, name in points:
            x = self.backend.run_blocks(x, done, stop)
            done = stop
            out[name] = x
        return out

    @torch.inference_mode()
    def image_embeddings(
        self, pixels: Tensor, interventions: dict[str, Callable[[Tensor], Tensor]] | None = None
    ) -> Tensor:
        """Image embeddings (unnormalised) with ``interventions`` (hook -> fn(acts) -> acts) applied."""
        points = sorted((self._stop_block(self.hook(h)), h) for h in interventions or {})
        x, done = self.backend.embed(pixels.to(self.device)), 0
        for stop, name in points:
            x = interventions[name](self.backend.run_blocks(x, done, stop))  # type: ignore[index]
            done = stop
        return self.backend.head(self.backend.run_blocks(x, done, self.n_layers))

    @torch.inference_mode()
    def text_embeddings(self, words: Sequence[str], template: str = "{}", batch_size: int = 256) -> Tensor:
        """Unnormalised text embeddings [V, E] of ``template.format(word)``; empty tokenisations raise."""
        if not words:
            raise SaevalError("the vocabulary is empty: it needs at least one word")
        check_tokenised(list(words), self.backend.token_counts(list(words)), f"the text tower of {self.name}")
        texts = [template.format(w) for w in words]
        return torch.cat(
            [self.backend.encode_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        )

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) of the model (100 for trained CLIPs, the paper's fixed softmax scale)."""
        return self.backend.logit_scale

    def normalised_image_embeddings(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.image_embeddings(pixels).float(), dim=-1)
