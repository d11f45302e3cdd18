"""Exceptions raised by gloss_core. They carry no Ray or Optuna types: the trainables map them."""


class NonFiniteEmbeddingsError(ValueError):
    """Raised when a loss receives NaN or inf embeddings, before any graph is built or solved.

    A sweep records the trial as failed with this reason instead of training on garbage.
    """


class UserError(Exception):
    """A bad input the user can fix (a spec, a path, a flag, a data file): the `gloss` command prints
    its message in one line and exits with status 2; `--debug` shows the traceback."""
