"""Sweeps: dataset x model x loss x seed grids on Ray Tune with one Optuna study and one set of ASHA
brackets per cell, logged to MLflow.

`spec` validates a YAML spec into cells; `runner` runs the phases (search, replicate, summary);
`cells` routes each trial to its cell's study and brackets; `tracking` logs trials to MLflow and
prints progress; `record` keeps the sweep's own record (spec, commit, versions); `resilience`
survives an unreachable store; `status` and `cli` are `gloss sweep status|run`.
"""
