"""Tasks: data + model + loss + metrics behind one small interface, registered by short name."""

from gatedrnn.tasks import adding, classify, copy, language, music, translate  # noqa: F401
from gatedrnn.tasks.base import TASKS, Batch, Metric, Task, build_task, register_task
from gatedrnn.tasks.models import LAYERS, SequenceModel, make_layer

__all__ = [
    "LAYERS",
    "TASKS",
    "Batch",
    "Metric",
    "SequenceModel",
    "Task",
    "build_task",
    "make_layer",
    "register_task",
]
