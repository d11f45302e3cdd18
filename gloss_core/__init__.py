"""gloss_core: G-Loss and the baseline losses, the graph maths, encoders, data and the training loop.

It imports neither Ray nor MLflow; `trainables/` and `sweeps/` wrap it.
"""

__version__ = "0.1.0"
