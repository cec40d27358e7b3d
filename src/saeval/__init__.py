"""saeval: evaluate sparse autoencoders faithfully, fast and offline."""

__version__ = "0.1.0"
