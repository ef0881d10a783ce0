"""spark-cf: distributed batch collaborative filtering on Apache Spark."""

__version__ = "0.1.0"
