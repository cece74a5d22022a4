"""hjepa_fast: Hierarchical JEPA world models. Kept light so that `hjepa_fast.kernels` imports alone."""

__version__ = "0.1.0"
