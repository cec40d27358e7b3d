"""Can the Hugging Face hub be reached? Asked before any model loads, so the answer takes at most ~1.5 s.

``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set to a true value mean unreachable; otherwise one TCP connect
to the hub endpoint (``HF_ENDPOINT``, or huggingface.co:443; through the HTTPS proxy when one is set), whose
answer is kept for the rest of the process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

TIMEOUT_S = 1.5
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TRUE = {"1", "on", "yes", "true"}  # what huggingface_hub reads as true


def offline_var() -> str | None:
    """The offline variable that is set, if any."""
    return next((v for v in OFFLINE_VARS if os.environ.get(v, "").strip().lower() in TRUE), None)


def endpoint() -> tuple[str, int]:
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _via_proxy(host: str, scheme: str) -> tuple[str, int] | None:
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return (url.hostname, url.port or 8080) if url.hostname else None


@functools.cache
def _connects(host: str, port: int) -> bool:
    # In a thread, because name resolution ignores the socket timeout and can hang for many seconds.
    answer: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT_S):
                answer.append(True)
        except OSError:
            answer.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(TIMEOUT_S + 0.1)
    return bool(answer and answer[0])


def unreachable_reason() -> str | None:
    """Why the hub cannot be reached (one phrase), or None when it answers."""
    var = offline_var()
    if var:
        return f"{var}={os.environ[var]} is set"
    host, port = endpoint()
    proxy = _via_proxy(host, "http" if port == 80 else "https")
    if not _connects(*(proxy or (host, port))):
        via = f" through the proxy {proxy[0]}:{proxy[1]}" if proxy else ""
        return f"{host}:{port} did not answer within {TIMEOUT_S} s{via}"
    return None


def datasets_installed() -> bool:
    return importlib.util.find_spec("datasets") is not None  # finds it without importing it


def check_hub_dataset(field: str, name: str, folder: str | None, offline: str, local: str) -> None:
    """One line, before any work, when the hub dataset ``name`` can't be loaded here; ``offline`` and ``local``
    are the exact flags that fix it (an offline set, or local files of the dataset's schema)."""
    from saeval.errors import SaevalError

    if not datasets_installed():
        raise SaevalError(f"{field} names {name}, which needs the datasets package (pip install "
                          f"'saeval[datasets]'); or run with {offline} (offline)")
    reason = None if folder else unreachable_reason()
    if reason:
        raise SaevalError(f"{field} names {name} from the Hugging Face hub, but {reason}; run with {offline} "
                          f"(offline) or {local}")
