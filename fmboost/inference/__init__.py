"""Boosting with trained stages: the pipeline (a base LDM or given latents or images → CFM stages →
the decoder), its compiled form, the sidecar that records how a result was made, and the steps that
upsample and score held-out data (shared by validation during training and by the benchmarks).

The front-ends that call it (``fmboost-generate``, folder boosting, the app) sit above this package.
"""
