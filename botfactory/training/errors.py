"""Errors raised by the training jobs (the CLI turns them into exit codes and one-line messages)."""

from __future__ import annotations


class TrainingError(Exception):
    """A training job cannot run or its result failed a check."""


class DataError(TrainingError):
    """The training data is missing, unreadable or unusable (CLI exit status 2)."""


class BaseModelError(TrainingError):
    """The base encoder (path or hub name) cannot be loaded (CLI exit status 2)."""


class ExportCheckError(TrainingError):
    """The exported ONNX model disagrees with torch, or int8 with fp32 (CLI exit status 1)."""
