"""SAELens releases by id ('release:sae_id' or a JSON object), fetched by the optional sae-lens package."""

from __future__ import annotations

from saeval.errors import SaevalError
from saeval.saes.base import SAE
from saeval.saes.formats.common import one_line, set_name
from saeval.saes.release_id import parse_release

__all__ = ["load_pretrained", "parse_release"]


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
