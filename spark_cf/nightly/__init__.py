"""The nightly job: pre-flight checks, then ingest, train, evaluate, predict, recommend
and publish one run."""
