"""Calibration: runs that score data sources, background jobs, params and probe files, reports."""
