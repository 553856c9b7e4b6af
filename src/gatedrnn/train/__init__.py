"""Training: the configuration of a run and the one loop every task trains with."""

from gatedrnn.train.config import TrainConfig
from gatedrnn.train.loop import EpochRecord, RunResult, train

__all__ = ["EpochRecord", "RunResult", "TrainConfig", "train"]
