"""Which clips fill a task's roles (train / val / test), checked against what the task needs, and a short name of
them for results keys: what the study's plan reads without importing the probe trainer."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from diffprobe.data.dataset import DatasetError
from diffprobe.data.splits import ROLES, RoleData, resolve_roles
from diffprobe.tasks import Task, TaskContext, task_class

MATCH_TASK = "point_tracking"  #: the task whose targets, query mode and metrics the training-free matcher is scored by
MATCH_ROLES = ("val", "test")  #: the roles the matcher reads (it trains nothing)


def task_context(roles: Mapping[str, RoleData]) -> TaskContext:
    """The task context of a task's roles; roles whose clips differ in shape, label spaces or query mode are an
    error naming the datasets (one readout cannot serve both)."""
    contexts = {}
    for role, rd in roles.items():
        ds = rd.dataset
        contexts[role] = (ds.spec, TaskContext(frames=ds.frames, height=ds.height, width=ds.width,
                                               label_spaces=dict(ds.label_spaces), max_objects=ds.max_objects,
                                               max_tracks=ds.max_tracks, query_mode=ds.query_mode))
    (spec0, ctx), *rest = contexts.values()
    for spec, other in rest:
        same = (other.frames, other.height, other.width, other.query_mode) == (ctx.frames, ctx.height, ctx.width,
                                                                              ctx.query_mode)
        shared = set(other.label_spaces) & set(ctx.label_spaces)
        if not same or any(other.label_spaces[k] != ctx.label_spaces[k] for k in shared):
            raise DatasetError(f"datasets {spec0!r} and {spec!r} cannot serve one task: clips of {ctx.frames}x"
                               f"{ctx.height}x{ctx.width} ({ctx.query_mode} queries) vs {other.frames}x{other.height}"
                               f"x{other.width} ({other.query_mode}), or different label spaces; set their frames / "
                               f"size options to match")
    return TaskContext(ctx.frames, ctx.height, ctx.width, ctx.label_spaces,
                       max(c.max_objects for _, c in contexts.values()),
                       max(c.max_tracks for _, c in contexts.values()), ctx.query_mode)


def check_fields(task: type[Task] | Task, roles: Mapping[str, RoleData]) -> None:
    """An error naming the task, the dataset and the missing Clip fields, if a role's dataset lacks any."""
    for rd in roles.values():
        missing = [f for f in task.fields if f not in rd.dataset.fields]
        if missing:
            raise DatasetError(f"task {task.name!r} needs the Clip field(s) {missing}, which dataset "
                               f"{rd.dataset.spec!r} does not provide (it has {sorted(rd.dataset.fields)})")


def task_roles(task_name: str, specs: str | Mapping[str, str], divide: tuple[float, float, float] = (0.8, 0.1, 0.1),
               seed: int = 0) -> dict[str, RoleData]:
    """The train / val / test clips of a task: one dataset spec for all roles, or ``{role: spec}`` (see
    :func:`~diffprobe.data.splits.resolve_roles`); checked against the task's fields and for one context."""
    task = task_class(task_name)
    specs = dict.fromkeys(ROLES, specs) if isinstance(specs, str) else dict(specs)
    missing = [r for r in ROLES if r not in specs]
    if missing:
        raise DatasetError(f"task {task_name!r}: no dataset for role(s) {missing}")
    roles = resolve_roles(specs, divide, seed)
    check_fields(task, roles)
    task_context(roles)
    return roles


def data_identity(roles: Mapping[str, RoleData]) -> str:
    """A short name of exactly which clips fill the roles (for results keys)."""
    blob = "|".join(f"{r}={roles[r].clips.name}" for r in ROLES if r in roles)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
