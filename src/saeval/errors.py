"""One exception type whose message is a single line telling the user what to fix."""


class SaevalError(Exception):
    """A user-facing error: the message names the bad input and what to do about it."""
