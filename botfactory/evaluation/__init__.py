"""NLU evaluation: metrics (`metrics`), report files (`report`), confusion heatmap (`confusion`).

Only the pure metrics are imported here; `report` and `confusion` need matplotlib (the `train`
extra) and are imported by whoever writes files.
"""

from botfactory.evaluation.metrics import (
    DEFAULT_OUT_OF_SCOPE,
    PRF,
    Evaluation,
    Gold,
    Predicted,
    Sample,
    Span,
    evaluate,
    is_out_of_scope,
)

__all__ = [
    "DEFAULT_OUT_OF_SCOPE",
    "PRF",
    "Evaluation",
    "Gold",
    "Predicted",
    "Sample",
    "Span",
    "evaluate",
    "is_out_of_scope",
]
