"""spark-cf as a pyspark.ml Estimator and Model, for code written against ALS.

:class:`SparkCF` takes ALS's Params (``rank``, ``maxIter``, ``regParam``, ``userCol``,
``itemCol``, ``ratingCol``, ``predictionCol``, ``coldStartStrategy``, ``seed``, ``tol``,
``numUserBlocks``, ``numItemBlocks``) plus ours (``optimizer``, ``learningRate``,
``biases``, ``meanNormalization``, ``initScale``, ``initialModel``) and fits with the same
training as the nightly job (:func:`spark_cf.training.fit.fit`). :class:`SparkCFModel`
has ALSModel's surface (``userFactors``, ``itemFactors``, ``transform``,
``recommendFor*``) and saves and loads alone, in a ``Pipeline`` or a
``CrossValidatorModel``. ``regParam`` is not ALS's: see :class:`SparkCF`.
"""

from __future__ import annotations

from spark_cf.ml.estimator import SparkCF
from spark_cf.ml.model import SparkCFModel, SparkCFTrainingSummary

__all__ = ["SparkCF", "SparkCFModel", "SparkCFTrainingSummary"]
