"""Each backbone's headline (block, t): the cell its number in the tables and figures is read at.

One rule, for the printed table (:mod:`~diffprobe.study.tables`) and the report (:mod:`~diffprobe.study.report`):
with a study config, the config's (``StudyConfig.headline_of``); only for a store without one, a guess from the
shape of each backbone's sweep (:func:`guess_headline`); ``--block/--t`` of ``diffprobe report`` is an explicit
override on top of either.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from diffprobe.errors import InputError
from diffprobe.study.formatting import fmt_num
from diffprobe.study.report_data import StudyData, label_name
from diffprobe.study.report_tasks import PRIOR, UNBLOCKED

if TYPE_CHECKING:  # the config is only read here; importing it costs the run-config classes
    from diffprobe.study.config import StudyConfig

#: backbone label -> its headline (block, t)
Heads = dict[str, tuple[int, float]]


def guess_headline(data: StudyData, backbone: str) -> tuple[int, float]:
    """The (block, t) at the centre of the backbone's sweep, at its final checkpoint (for a store without a config).

    Each measured pair (b, t) scores (#distinct t measured at block b) + (#distinct blocks measured at t); the
    highest score wins, so for a cross-shaped sweep (all t at one block, all blocks at one t) the crossing point
    wins, and a backbone measured at a single pair gets that pair. Ties: more result rows, then lower t, then
    lower block.
    """
    step = data.final_step(backbone)
    keys = [k for k in data.stats if k.backbone == backbone and k.step == step]
    rows = Counter((k.block, k.t) for k in keys for _ in range(data.stats[k].n))
    ts_at_block: dict[int, set[float]] = defaultdict(set)
    blocks_at_t: dict[float, set[int]] = defaultdict(set)
    for b, t in rows:
        ts_at_block[b].add(t)
        blocks_at_t[t].add(b)
    return min(rows, key=lambda p: (-(len(ts_at_block[p[0]]) + len(blocks_at_t[p[1]])), -rows[p], p[1], p[0]))


def config_name(cfg: StudyConfig, label: str) -> str | None:
    """The config's backbone a display label stands for: the label itself, without its ``[...]`` qualifier, or the
    reference twin of a model-size variant ``name@size``; None for a backbone the config does not name."""
    base = label_name(label) if label.endswith("]") and label not in cfg.backbones else label
    if base in cfg.backbones:
        return base
    name, _, size = base.rpartition("@")
    return name if name in cfg.backbones and size in cfg.sizes else None


def _own_headlines(cfg: StudyConfig | None, data: StudyData) -> tuple[Heads, list[str]]:
    """Each measured backbone's headline before any override, and notes."""
    heads, notes = {}, []
    for b in data.backbones:
        name = None if cfg is None else config_name(cfg, b)
        if label_name(b) == PRIOR:
            heads[b] = UNBLOCKED
        elif name is not None:
            heads[b] = cfg.headline_of(name)
        else:
            heads[b] = guess_headline(data, b)
            if cfg is not None:
                notes.append(f"{b} is not a backbone of the study config: its headline (block {heads[b][0]}, t "
                             f"{fmt_num(heads[b][1])}) is the centre of its sweep")
    return heads, notes


def resolve_headlines(cfg: StudyConfig | None, data: StudyData, override: tuple[int, float] | None = None
                      ) -> tuple[Heads, list[str]]:
    """Headline (block, t) of every backbone of ``data``, and notes.

    The config's headline when there is a config (``name@size`` variants: their twin's; the prior: where it is
    stored), the guess of :func:`guess_headline` only without one. ``override`` (``--block/--t``) applies to every
    backbone measured there at its final checkpoint; the others keep their own, with a note; a point no backbone
    was measured at is an :class:`~diffprobe.errors.InputError` listing the points the store holds.
    """
    heads, notes = _own_headlines(cfg, data)
    if override is None:
        return heads, notes
    point = (override[0], float(override[1]))
    held = sorted({(k.block, k.t) for k in data.stats})
    if point not in held:
        raise InputError(f"no backbone of study {data.study!r} was measured at block {point[0]}, t "
                         f"{fmt_num(point[1])}; the store holds (block, t) "
                         + ", ".join(f"({b}, {fmt_num(t)})" for b, t in held))
    for b, own in heads.items():
        step = data.final_step(b)
        if any((k.block, k.t) == point for k in data.stats if k.backbone == b and k.step == step):
            heads[b] = point
        else:
            notes.append(f"{b} was not measured at block {point[0]}, t {fmt_num(point[1])}; its own headline "
                         f"(block {own[0]}, t {fmt_num(own[1])}) is used")
    return heads, notes


def headline_rule(cfg: StudyConfig | None, override: tuple[int, float] | None = None) -> str:
    """What :func:`resolve_headlines` did, in words (plain text, for the report's page)."""
    if cfg is not None:
        rule = ("the study config's (its headline entry for the backbone, else the study's block and t; block 0 and "
                "t 0 for a backbone without blocks; a model-size variant at its twin's), at its final checkpoint")
    else:
        rule = ("without a study config, guessed as the centre of its sweep at its final checkpoint (the pair whose "
                "block was measured at the most noise levels plus whose t was measured at the most blocks)")
    if override is not None:
        rule += (f"; --block {override[0]} --t {fmt_num(override[1])} replaced it for every backbone measured "
                 f"there")
    block, t = UNBLOCKED
    return (f"Headline (block, t) per backbone: {rule}. The prior is read where it is stored (block {block}, "
            f"t {fmt_num(t)}).")
