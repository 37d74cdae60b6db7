"""An experiment (``evaluation/run_experiment.py``): arms trained with one budget on one split of images,
evaluated together. One module a job: :mod:`.config` (the YAML), :mod:`.images` (the split, nothing
held out ever trained on), :mod:`.data` (latent shards and teacher pairs), :mod:`.arms` (training each
arm through ``cluster/submit.py``) and :mod:`.results` (the tables, plots and MLflow runs).
"""
