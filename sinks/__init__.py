"""Outputs: decision records, dead letters and Prometheus metrics."""
