"""Studies: a grid of training runs from a TOML file, a SQLite store, local and Ray executors."""

from gatedrnn.study.runner import run_study, study_paths
from gatedrnn.study.spec import (
    CellChoice,
    ExecutorSpec,
    StudySpec,
    Trial,
    load_study,
    parse_study,
    stored_study,
)
from gatedrnn.study.store import StudyStore

__all__ = [
    "CellChoice",
    "ExecutorSpec",
    "StudySpec",
    "StudyStore",
    "Trial",
    "load_study",
    "parse_study",
    "run_study",
    "stored_study",
    "study_paths",
]
