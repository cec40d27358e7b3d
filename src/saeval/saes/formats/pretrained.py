"""SAELens releases by id ('release:sae_id' or a JSON object), fetched by the optional sae-lens package."""

from __future__ import annotations

import json

from saeval.errors import SaevalError
from saeval.saes.base import SAE
from saeval.saes.formats.common import one_line, set_name


def parse_release(text: str) -> tuple[str, str] | None:
    """'release:sae_id' or '{"release": ..., "sae_id": ...}' -> (release, sae_id); None if neither."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise SaevalError(f"SAE id {text!r} is not valid JSON ({one_line(e)})") from e
        if not isinstance(spec, dict) or not spec.get("release") or not spec.get("sae_id"):
            raise SaevalError(f"SAE id {text!r} needs both \"release\" and \"sae_id\"")
        return str(spec["release"]), str(spec["sae_id"])
    release, sep, sae_id = text.partition(":")
    # A release may be a HF repo id ("org/repo"), but something that starts like a path is a missing path.
    looks_like_path = release.startswith(("/", ".", "~"))
    return (release, sae_id) if sep and release and sae_id and not looks_like_path else None


def load_pretrained(release: str, sae_id: str, device: str) -> SAE:
    try:
        from sae_lens import SAE as SAELensSAE
    except ImportError as e:
        raise SaevalError(f"loading SAELens release {release!r} needs the optional sae-lens package and "
                          "network access: pip install 'saeval[sae-lens]'") from e
    from saeval.saes.adapter import wrap_sae  # adapter imports the formats package

    try:
        obj = SAELensSAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:  # network, unknown release/id, HF errors: all surface as one line
        raise SaevalError(f"SAELens could not load release {release!r} id {sae_id!r}: {one_line(e)}") from e
    return set_name(wrap_sae(obj), f"{release}/{sae_id}")
