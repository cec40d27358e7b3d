"""SAELens release ids ('release:sae_id' or a JSON object), parsed without torch: the SAE loader and the
SAEBench export (which names files by release and id) read them alike."""

from __future__ import annotations

import json

from saeval.errors import SaevalError


def parse_release(text: str) -> tuple[str, str] | None:
    """'release:sae_id' or '{"release": ..., "sae_id": ...}' -> (release, sae_id); None if neither."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:  # its message is one line ("Expecting value: line 1 column 2 ...")
            raise SaevalError(f"SAE id {text!r} is not valid JSON ({e})") from e
        if not isinstance(spec, dict) or not spec.get("release") or not spec.get("sae_id"):
            raise SaevalError(f"SAE id {text!r} needs both \"release\" and \"sae_id\"")
        return str(spec["release"]), str(spec["sae_id"])
    release, sep, sae_id = text.partition(":")
    # A release may be a HF repo id ("org/repo"), but something that starts like a path is a missing path.
    looks_like_path = release.startswith(("/", ".", "~"))
    return (release, sae_id) if sep and release and sae_id and not looks_like_path else None
