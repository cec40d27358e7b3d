"""Assertions several test modules share."""

from __future__ import annotations

import pytest

from saeval.errors import SaevalError


def error_of(fn, *args) -> str:
    """The message of the SaevalError ``fn(*args)`` raises, checked to be one line."""
    with pytest.raises(SaevalError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, "SaevalError messages are one line"
    return msg
