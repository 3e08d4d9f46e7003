"""klingflow: batch video edits through fal.ai's Kling O3 Pro edit endpoint, orchestrated by Prefect."""

__version__ = "0.1.0"
