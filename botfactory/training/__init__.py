"""Training jobs (CLI `botfactory train` / `train-sentiment`; torch and transformers).

Fine-tune a base encoder, export to ONNX, check, quantise to int8 and write a model
directory (docs/model-format.md). The serving side never imports this package.
"""

from botfactory.training.errors import (
    BaseModelError,
    DataError,
    ExportCheckError,
    TrainingError,
)
from botfactory.training.export import CheckThresholds
from botfactory.training.model import load_torch_model
from botfactory.training.nlu import train_bot
from botfactory.training.sentiment import train_sentiment
from botfactory.training.trainer import TrainConfig

__all__ = [
    "BaseModelError",
    "CheckThresholds",
    "DataError",
    "ExportCheckError",
    "TrainConfig",
    "TrainingError",
    "load_torch_model",
    "train_bot",
    "train_sentiment",
]
