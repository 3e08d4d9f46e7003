"""Prefect flows of klingflow."""
