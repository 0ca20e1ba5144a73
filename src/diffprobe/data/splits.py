"""Which clips play a task's train, val and test roles.

Each role names a dataset spec, optionally with ``#SPLIT`` to pick one of its splits (``davis:DIR#val``). Roles that
name the same spec share its splits by one rule, so a dataset works whether or not it has splits of its own:

1. ``test``: the dataset's ``test`` split, else its ``val`` split (benchmarks report on their validation set);
2. ``train``: its ``train`` split;
3. ``val``: its ``val`` split when that is not already the test set;
4. the roles still without a split are carved from ``train`` (or from the dataset's only split), which is divided
   among them and the train role by a seeded ratio (``divide``, train:val:test); a single-split dataset that serves
   one role only is used whole (point tracking trained on Probe World, tested on all of TAP-Vid DAVIS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from diffprobe.data.dataset import ClipDataset, ClipSequence, DatasetError, Subset
from diffprobe.data.registry import open_dataset
from diffprobe.spec import DatasetSpec

ROLES: tuple[str, ...] = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class RoleData:
    """The clips of one role and the dataset they come from."""

    dataset: ClipDataset
    clips: ClipSequence
    source: str  #: "SPLIT", or "SPLIT part ROLE of a:b:c (seed S)" for a carved role


def _plan(splits: tuple[str, ...], roles: list[str]) -> tuple[dict[str, str], list[str], str | None]:
    """Roles given a whole split, the roles to carve, and the split they are carved from."""
    whole: dict[str, str] = {}
    if "test" in roles:
        for s in ("test", "val"):
            if s in splits:
                whole["test"] = s
                break
    if "train" in roles and "train" in splits:
        whole["train"] = "train"
    if "val" in roles and "val" in splits and whole.get("test") != "val":
        whole["val"] = "val"
    rest = [r for r in roles if r not in whole]
    if not rest:
        return whole, [], None
    if "train" in splits:
        base = "train"
    elif len(splits) == 1:
        base = splits[0]
    else:
        return whole, rest, None
    if len(rest) == 1 and not any(s == base for s in whole.values()):
        return {**whole, rest[0]: base}, [], None  # the only user of that split: take it whole
    carved = [r for r in ROLES if r in rest or whole.get(r) == base]
    for r in carved:
        whole.pop(r, None)
    return whole, carved, base


def _carve(seq: ClipSequence, roles: list[str], divide: tuple[float, float, float], seed: int
           ) -> dict[str, ClipSequence]:
    """Divide ``seq`` among ``roles`` in proportion to their ``divide`` shares, by a seeded permutation."""
    shares = np.array([divide[ROLES.index(r)] for r in roles], np.float64)
    if (shares <= 0).any():
        raise DatasetError(f"{seq.name}: divide {list(divide)} gives no share to role(s) "
                           f"{[r for r, s in zip(roles, shares, strict=True) if s <= 0]}")
    order = np.random.default_rng(seed).permutation(len(seq))
    bounds = np.round(np.cumsum(shares / shares.sum()) * len(seq)).astype(int)
    out, lo = {}, 0
    ratio = ":".join(f"{s:g}" for s in divide)
    for role, hi in zip(roles, bounds, strict=True):
        if hi <= lo:
            raise DatasetError(f"{seq.name}: {len(seq)} clips are too few to divide {ratio} among {roles}")
        out[role] = Subset(seq, np.sort(order[lo:hi]), f"{seq.part}-{role}-of-{ratio}-seed{seed}")
        lo = hi
    return out


def resolve_roles(specs: Mapping[str, str], divide: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
                  ) -> dict[str, RoleData]:
    """``{role: spec}`` for some of train / val / test -> each role's clips (see the module docstring)."""
    unknown = sorted(set(specs) - set(ROLES))
    if unknown:
        raise DatasetError(f"unknown role(s) {unknown}; roles are {list(ROLES)}")
    groups: dict[DatasetSpec, list[str]] = {}
    out: dict[str, RoleData] = {}
    opened: dict[DatasetSpec, ClipDataset] = {}
    for role in ROLES:
        if role not in specs:
            continue
        ref = DatasetSpec.parse(specs[role])
        base, split = ref.whole(), ref.split
        if base not in opened:
            opened[base] = open_dataset(base)
        if split is not None:
            out[role] = RoleData(opened[base], opened[base].clips(split), split)
        else:
            groups.setdefault(base, []).append(role)
    for base, roles in groups.items():
        ds = opened[base]
        whole, carved, source = _plan(ds.splits, roles)
        for role, split in whole.items():
            out[role] = RoleData(ds, ds.clips(split), split)
        if carved and source is None:
            raise DatasetError(f"dataset {str(base)!r}: cannot tell which of its splits {list(ds.splits)} to use for "
                               f"{carved}; name one with {base}#SPLIT")
        if carved:
            ratio = ":".join(f"{s:g}" for s in divide)
            for role, seq in _carve(ds.clips(source), carved, divide, seed).items():
                out[role] = RoleData(ds, seq, f"{source} part {role} of {ratio} (seed {seed})")
    return {r: out[r] for r in ROLES if r in out}
