"""gloss_core: G-Loss and the baseline losses, the graph maths, encoders, data and the training loop.

| part | what it holds |
| --- | --- |
| `config.py` | `TrainConfig`, the flat typed configuration of one run |
| `train.py` | `train(config, report, resume_from)`: one run, top to bottom |
| `losses/` | the losses on embeddings, their shared base, and the registry `build_loss` reads |
| `graph/` | affinity, transition matrix and label propagation; sigma rules; the label mask |
| `data/` | CSV, Hugging Face and synthetic sources; splits; token-cached batches |
| `training/` | `build_run` (one place builds a run), the epoch loop, checkpoints, probe, metrics |
| `models.py` | encoders with pooling and a linear head |
| `export.py` | a trained model as a Hugging Face folder with its head, labels and card, and back |
| `timing.py`, `errors.py`, `provenance.py`, `spread.py` | timing, exceptions, provenance and the default store, mean ± std |

It imports neither Ray nor MLflow; `trainables/` and `sweeps/` wrap it.
"""

__version__ = "0.1.0"
