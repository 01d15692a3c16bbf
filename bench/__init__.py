"""Reproducible benchmarks that print their figures; run them with ``bench/run NAME``."""
