"""The pipeline's stages as Prefect tasks, one module per stage."""
