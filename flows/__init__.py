"""Prefect flows: one per DVC stage, plus the whole chain. Thin: tasks call `pipeline`."""
