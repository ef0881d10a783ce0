"""The model: factors and offsets with the one scoring rule, the normalisation, and the
model on disk."""
