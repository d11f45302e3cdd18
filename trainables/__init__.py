"""Ray Tune trainables wrapping gloss_core.train (issue: sweep service)."""
