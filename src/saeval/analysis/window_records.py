"""The records of a top-windows pass (see windows.py), torch-free so that result types can hold them."""

from __future__ import annotations

from pydantic import BaseModel, Field

CRITERIA = ("mean", "density", "max")


class ActExample(BaseModel):
    """One window: its token ids, each token's text, and the latent's activation on each token."""

    tokens: list[int]
    texts: list[str]
    acts: list[float]
    context: int = Field(-1, description="row of the contexts tensor of the pass")
    start: int = Field(-1, description="position of the window's first token in that row")
    score: float | None = Field(0.0, description="the criterion's value for this window")


class LatentWindows(BaseModel):
    latent: int
    fired: bool
    n_active_tokens: int
    n_active_windows: int
    max_act: float | None
    mean: list[ActExample] = []
    density: list[ActExample] = []
    max: list[ActExample] = []

    def criterion(self, name: str) -> list[ActExample]:
        return getattr(self, name)
