"""``python -m saeval``: the same command line as ``saeval``."""

from saeval.cli import app

app(prog_name="saeval")
