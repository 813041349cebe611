"""Risk signals: per-step formulas (MLX), response aggregation and quadrants (plain Python).

Nothing here loads models or speaks HTTP; the definitions follow docs/signals.md exactly.
"""
