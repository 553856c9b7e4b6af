"""Tasks: data + model + loss + metrics behind one small interface, registered by short name."""

from gatedrnn.tasks import adding, classify, copy, language, music, translate  # noqa: F401
from gatedrnn.tasks.base import (
    TASKS,
    Batch,
    Metric,
    Task,
    build_task,
    check_datasets,
    check_task_options,
    register_task,
    task_option_names,
)
from gatedrnn.tasks.models import LAYERS, SequenceModel, check_layer_options, make_layer

__all__ = [
    "LAYERS",
    "TASKS",
    "Batch",
    "Metric",
    "SequenceModel",
    "Task",
    "build_task",
    "check_datasets",
    "check_layer_options",
    "check_task_options",
    "make_layer",
    "register_task",
    "task_option_names",
]
