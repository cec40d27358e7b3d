"""What to do when a requested data size exceeds what the data holds.

The papers' sizes are the defaults (SAEBench's density pass asks 4.1M tokens; State of the Union holds about
2.1M). By default the whole data is used, and the job records the requested and the used size plus a warning;
under ``strict`` it is an error instead. The runner opens one :func:`size_policy` per job, so loaders deep in
an eval report here without every call site passing the policy along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from saeval.errors import SaevalError


@dataclass
class SizeLog:
    strict: bool = False
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


_CURRENT: ContextVar[SizeLog | None] = ContextVar("saeval_size_log", default=None)


@contextmanager
def size_policy(strict: bool = False) -> Iterator[SizeLog]:
    """Collect the size decisions of the code run inside (one job); ``strict`` turns shortfalls into errors."""
    log = SizeLog(strict=strict)
    token = _CURRENT.set(log)
    try:
        yield log
    finally:
        _CURRENT.reset(token)


def fit(what: str, requested: int, available: int, unit: str, hint: str) -> int:
    """How many of ``requested`` units to use when ``available`` exist; records or refuses a shortfall."""
    log = _CURRENT.get()
    if requested <= available:
        if log is not None:
            log.sizes.setdefault(what, {"requested": requested, "used": requested})
        return requested
    if log is None or log.strict:
        raise SaevalError(f"asked for {requested} {unit} but {what} has only {available}: {hint}")
    log.sizes[what] = {"requested": requested, "used": available}
    message = f"{what}: asked for {requested} {unit}, used all {available} (--strict makes this an error)"
    if message not in log.warnings:
        log.warnings.append(message)
    return available
