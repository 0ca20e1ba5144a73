"""Probing tasks: what each task reads from a clip, the probe it trains, its loss and its metrics."""

from diffprobe.errors import InputError
from diffprobe.tasks.base import Task, TaskContext
from diffprobe.tasks.classification import ActionRecognition, ImageClassification
from diffprobe.tasks.depth import DepthEstimation
from diffprobe.tasks.pose import CameraPose
from diffprobe.tasks.tracking import BoxTracking, PointTracking

#: task name -> class, in the order of the paper's tasks (semantics -> motion and 3D)
TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (ImageClassification, ActionRecognition, DepthEstimation, CameraPose, PointTracking, BoxTracking)
}


class UnknownTask(InputError):
    """A task name that :data:`TASKS` does not hold (also a ``ValueError``)."""


def task_class(name: str) -> type[Task]:
    """The task class called ``name``; an unknown name is an error listing the known ones (from :data:`TASKS`)."""
    if name not in TASKS:
        raise UnknownTask(f"unknown task {name!r}; known tasks are {', '.join(TASKS)}")
    return TASKS[name]


def make_task(name: str, ctx: TaskContext) -> Task:
    """The task called ``name`` in context ``ctx`` (see :func:`task_class`)."""
    return task_class(name)(ctx)


__all__ = ["TASKS", "Task", "TaskContext", "UnknownTask", "make_task", "task_class", "ActionRecognition",
           "BoxTracking", "CameraPose", "DepthEstimation", "ImageClassification", "PointTracking"]
