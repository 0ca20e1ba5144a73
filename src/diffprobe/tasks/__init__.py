"""Probing tasks: what each task reads from a clip, the probe it trains, its loss and its metrics."""

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


def make_task(name: str, ctx: TaskContext) -> Task:
    """The task called ``name``; an unknown name is an error listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks are {list(TASKS)}")
    return TASKS[name](ctx)


__all__ = ["TASKS", "Task", "TaskContext", "make_task", "ActionRecognition", "BoxTracking", "CameraPose",
           "DepthEstimation", "ImageClassification", "PointTracking"]
