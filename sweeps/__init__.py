"""Sweeps: dataset x model x loss x seed grids on Ray Tune with one Optuna study and one set of ASHA
brackets per cell, logged to MLflow.

`spec` validates a YAML spec into cells (`yaml_strict` reads it; `sensitivity` holds the
perturbation block); `preflight` checks store, storage, address and resources before anything
starts; `storage` is the sweep's folder on any filesystem, with the marker that guards deletion;
`runner` runs the phases (search, replicate, sensitivity, summary);
`cells` routes each trial to its cell's study and brackets; `tracking` logs trials to MLflow and
prints progress; `record` keeps the sweep's own record (spec, commit, versions); `resilience`
survives an unreachable store; `status` and `cli` are `gloss sweep status|run`.
"""
