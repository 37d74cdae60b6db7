"""Encoding raw image shards into latent shards (``python -m data_pipeline.encode_shards``)."""
