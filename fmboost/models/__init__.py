"""Neural networks: the ADM-style U-Net and its EMA shadow."""
