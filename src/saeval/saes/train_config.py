"""The trainer's config, torch-free so the CLI validates it before any model loads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    architecture: Literal["topk", "relu"] = Field("topk", description="TopK, or ReLU with an L1 penalty")
    d_sae: int = Field(4608, gt=0, description="dictionary size (latents)")
    k: int = Field(32, gt=0, description="active latents per token (topk)")
    l1_coeff: float = Field(5.0, ge=0, description="L1 coefficient (relu)")
    lr: float | None = Field(None, gt=0, description="learning rate; default 2e-4 / sqrt(d_sae / 16384) (sparsify)")
    batch_size: int = Field(1024, gt=0, description="tokens per optimiser step")
    epochs: int = Field(2, gt=0, description="passes over the cached activations")
    aux_k: int | None = Field(None, gt=0, description="AuxK latents for dead-latent revival; default d_in // 2")
    aux_coeff: float = Field(1 / 32, ge=0, description="weight of the AuxK loss")
    dead_tokens: int = Field(100_000, gt=0, description="a latent silent for this many tokens counts as dead")
    seed: int = Field(0, description="seed of initialisation and batch order")
