"""MLflow runs to paper tables, significance tests and plots (issue: analysis)."""
