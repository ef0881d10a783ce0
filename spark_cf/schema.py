"""Column and table names: the contract between the stages and with the tables we publish.

Every stage and every output table uses these names; the README's table descriptions
list the same ones. Input tables may name their columns otherwise (``[input]`` maps them
here at ingest).
"""

from __future__ import annotations

#: The canonical columns of ratings after ingest (the output tables use these too).
USER, ITEM, RATING, TIMESTAMP = "user_id", "item_id", "rating", "timestamp"
#: Why a quarantined row was set aside.
REASON = "reason"
#: Dense 0-based indices of the raw ids (:mod:`spark_cf.data.indexing`).
USER_IDX, ITEM_IDX = "user_idx", "item_idx"
#: True for the ratings held out for evaluation (:mod:`spark_cf.data.prepare`).
IS_VAL = "is_val"
#: Columns of the predictions and top-N tables.
PREDICTION, RANK, SCORE = "prediction", "rank", "score"
#: Columns of the factor tables (``count``: an item's training ratings, for the
#: most-popular baseline).
FEATURES, MEAN, BIAS, COUNT = "features", "mean", "bias", "count"

#: The parts of a saved model folder.
USER_FACTORS, ITEM_FACTORS, METADATA = "user_factors", "item_factors", "metadata.json"
#: The tables and files of a nightly run folder (see README, "What a run publishes").
MODEL, PREDICTIONS, TOP_N, QUARANTINE = "model", "predictions", "top_n", "quarantine"
#: The top-N model of ``[ranking]`` (published beside ``model`` when it is enabled).
RANKING_MODEL = "ranking_model"
TABLES = (MODEL, RANKING_MODEL, PREDICTIONS, TOP_N, QUARANTINE)
METRICS, CONVERGENCE, SUCCESS = "metrics.json", "convergence.png", "_SUCCESS"
