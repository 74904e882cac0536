"""localtrain: train a real language model from scratch on the machine you already own."""

__version__ = "0.1.0"
