"""Evaluation: one runner interface over every model format, scoring, the quality gate and the report."""
