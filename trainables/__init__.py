"""The Ray Tune side of one trial: the phase plan that turns a trial's config into a `TrainConfig`
(`plan.py`) and the function trainable that runs it (`trainable.py`)."""
