"""Launching training and batch jobs on Slurm or locally (``python cluster/submit.py``)."""
