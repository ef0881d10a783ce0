"""Training: the per-block NumPy kernel, the ratings blocked and cached on Spark, the
parameter layout, the optimisers, the loop, and the fit that wires them."""
