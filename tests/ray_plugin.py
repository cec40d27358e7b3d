"""An eval plugin for the Ray tests (``--plugin ray_plugin``): slow enough to kill a worker mid-job, and
deterministic (a function of the SAE's weights), so a retried job gives the same result."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from saeval.evals import EVALS, EvalConfig, EvalSpec, register_eval
from saeval.results import EvalResult, SAEInfo


class SlowConfig(EvalConfig):
    sleep: float = Field(1.0, ge=0, description="seconds to wait per job")


class SlowMetrics(BaseModel):
    weight_sum: float


class SlowDetails(BaseModel):
    pid: int


class SlowResult(EvalResult[SlowConfig, SlowMetrics, SlowDetails]):
    pass


def run(ctx, sae, config):
    marks = os.environ.get("SAEVAL_TEST_MARKS")
    if marks:  # lets the test find a worker that is inside a job
        Path(marks, f"{os.getpid()}.{sae.name}").touch()
    time.sleep(config.sleep)
    total = float(sum(p.detach().double().sum() for p in sae.parameters()))
    return SlowResult(eval="slow", sae=SAEInfo.of(sae), preset=ctx.preset, config=config,
                      metrics=SlowMetrics(weight_sum=total), details=SlowDetails(pid=os.getpid()))


if "slow" not in EVALS:
    register_eval(EvalSpec("slow", SlowConfig, SlowResult, run, "sleeps, then sums the SAE's weights",
                           presets={"tiny": {}}))
