"""Sweep specs and the runner: grids on Ray Tune with Optuna + ASHA, logged to MLflow (issue: sweep service)."""
