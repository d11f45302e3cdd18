"""MLflow runs of finished sweeps to the paper's tables, significance tests and figures.

Imports neither Ray nor torch: it reads the store, and re-validates each sweep's recorded spec
with `sweeps.spec`. `load` reads runs, `tables`/`table` build the tables, `stats` the tests,
`plots` the figures, `sensitivity` and `importance` the hyperparameter views, `report` all of it.
"""
