"""Calibrated params shipped with halluwatch (package data: JSON params and their probe files)."""

from pathlib import Path

DIR = Path(__file__).resolve().parent
