"""The trainer service: runs the training jobs of the `TRAIN` queue (docs/training.md)."""
