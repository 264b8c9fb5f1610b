"""Alerts from calibrated scores, grouped into incidents (the ensemble)."""
