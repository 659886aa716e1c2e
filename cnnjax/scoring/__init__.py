"""The bottom layer that training and evaluation share: pure functions of jax and numpy.

- `losses`: the lecture's and the papers' losses, one value per example, in float32.
- `metrics`: top-k mistakes as (sum, count) pairs over a masked batch, tree norms.
- `views`: any evaluation view (one image, multi-crop, dense multi-scale) -> one row of
  class scores per example, and the one evaluation loop (`sum_over_batches`).

`cnnjax.train` and `cnnjax.evaluate` both import this package and never each other
(the import contracts in `.importlinter` say so).
"""

from cnnjax.scoring import losses, metrics
from cnnjax.scoring.views import (
    DATA_VIEWS,
    DENSE_KEY_PREFIX,
    DENSE_VIEWS,
    VIEWS,
    check_layout,
    predict_views,
    dense_keys,
    ensemble_scores,
    error_sums,
    log_of,
    sum_over_batches,
    view_scores,
)

__all__ = [
    "DATA_VIEWS",
    "DENSE_KEY_PREFIX",
    "DENSE_VIEWS",
    "VIEWS",
    "check_layout",
    "predict_views",
    "dense_keys",
    "ensemble_scores",
    "error_sums",
    "log_of",
    "losses",
    "metrics",
    "sum_over_batches",
    "view_scores",
]
