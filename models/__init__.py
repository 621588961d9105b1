"""The anchor task and the models trained on it."""

from models.hooked import CheckpointError, build, card, load
from models.task import AnchorBatch, AnchorTask
from models.sweep import SweepSpec
from models.train import TrainConfig, train, train_to_folder

__all__ = ["AnchorBatch", "AnchorTask", "CheckpointError", "SweepSpec", "TrainConfig", "build", "card", "load", "train", "train_to_folder"]
