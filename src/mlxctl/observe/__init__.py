"""Observed state: what really runs (processes, jobs in flight, health, model files), as plain
values.
"""
