"""splitgrow: grow neural networks by splitting steepest descent."""

__version__ = "0.1.0"
