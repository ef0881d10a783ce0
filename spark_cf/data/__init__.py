"""Data in: schema checks and quarantine, ingest, id indexing, the held-out split and
normalisation, format conversion, and the synthetic generator."""
