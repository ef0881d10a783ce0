"""The single-node NumPy reference of the same math (written independently of the
kernel) and the parity check against the Spark path. Production code never imports it."""
