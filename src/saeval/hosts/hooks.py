"""TransformerLens hook names mapped onto Hugging Face modules.

A hook name like ``blocks.8.hook_resid_post`` is parsed into a :class:`HookPoint` and resolved, for a given
HF causal LM, to a module plus the side of it (input or output) that carries that activation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

from saeval.errors import SaevalError

HOOK_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out)$")


@dataclass(frozen=True)
class HookPoint:
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"

    @property
    def last_layer_needed(self) -> int:
        """Index of the last decoder block that must run to produce this activation."""
        return self.layer - 1 if self.kind == "hook_resid_pre" else self.layer


@dataclass(frozen=True)
class ModuleSite:
    """Where an activation lives: the input (pre-hook) or output of ``module``."""

    module: nn.Module
    side: Literal["input", "output"]


@dataclass(frozen=True)
class ArchLayout:
    """Attribute paths of one model family. Paths are relative to the CausalLM wrapper."""

    layers: str
    attn: str
    mlp: str
    final_norm: str
    # Gemma2/3 normalise the attention and MLP outputs before adding them back: TransformerLens's
    # hook_attn_out / hook_mlp_out sit after those norms, so we read the norms' outputs.
    attn_out_module: str | None = None
    mlp_out_module: str | None = None


LAYOUTS: dict[str, ArchLayout] = {
    "llama": ArchLayout("model.layers", "self_attn", "mlp", "model.norm"),
    "mistral": ArchLayout("model.layers", "self_attn", "mlp", "model.norm"),
    "qwen2": ArchLayout("model.layers", "self_attn", "mlp", "model.norm"),
    "qwen3": ArchLayout("model.layers", "self_attn", "mlp", "model.norm"),
    "gemma": ArchLayout("model.layers", "self_attn", "mlp", "model.norm"),
    "gemma2": ArchLayout(
        "model.layers", "self_attn", "mlp", "model.norm", "post_attention_layernorm", "post_feedforward_layernorm"
    ),
    "gemma3_text": ArchLayout(
        "model.layers", "self_attn", "mlp", "model.norm", "post_attention_layernorm", "post_feedforward_layernorm"
    ),
    "gpt2": ArchLayout("transformer.h", "attn", "mlp", "transformer.ln_f"),
    "gpt_neox": ArchLayout("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm"),
}


def layout_for(model_type: str) -> ArchLayout:
    if model_type not in LAYOUTS:
        raise SaevalError(
            f"model type {model_type!r} has no hook layout; supported: {', '.join(sorted(LAYOUTS))}"
        )
    return LAYOUTS[model_type]


def get_attr(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def valid_hook_names(n_layers: int) -> list[str]:
    return [f"blocks.{l}.{kind}" for l in range(n_layers) for kind in HOOK_KINDS]


def parse_hook(name: str, n_layers: int) -> HookPoint:
    match = _HOOK_RE.match(name)
    if match is None or int(match.group(1)) >= n_layers:
        examples = ", ".join(f"blocks.{{0..{n_layers - 1}}}.{kind}" for kind in HOOK_KINDS)
        raise SaevalError(f"unknown hook {name!r}; valid hooks are {examples}")
    return HookPoint(int(match.group(1)), match.group(2))


def resolve(model: nn.Module, layout: ArchLayout, hook: HookPoint) -> ModuleSite:
    block = get_attr(model, layout.layers)[hook.layer]  # type: ignore[index]
    if hook.kind == "hook_resid_pre":
        return ModuleSite(block, "input")
    if hook.kind == "hook_resid_post":
        return ModuleSite(block, "output")
    if hook.kind == "hook_attn_out":
        return ModuleSite(get_attr(block, layout.attn_out_module or layout.attn), "output")
    return ModuleSite(get_attr(block, layout.mlp_out_module or layout.mlp), "output")
