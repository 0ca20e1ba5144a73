"""Typed, strict run configs.

Every run of diffprobe is described by one dataclass that subclasses :class:`Config`. Configs are
built from presets, overridden with ``key=value`` strings (dotted paths reach nested configs), and
saved as JSON beside the run's outputs. A key that the dataclass does not declare, or a value of the
wrong type, is an error that names the key: there are no silent defaults.

Example::

    @dataclass(frozen=True)
    class WorldConfig(Config):
        size: int = 32
        frames: int = 8

    cfg = WorldConfig.from_dict({"size": 64})
    cfg = cfg.override(["frames=16"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from diffprobe.errors import DiffprobeError
from diffprobe.utils.io import atomic_write_text

C = TypeVar("C", bound="Config")


class ConfigError(DiffprobeError, ValueError):
    """A config key is unknown, missing, or has a value of the wrong type."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert JSON forms (lists -> tuples, dicts -> configs)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            with contextlib.suppress(ConfigError):  # try the next member of the union
                return _coerce(value, arg, where)
        raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a sequence, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return tp.from_dict(value, where=where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an int, got {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def parse_value(text: str) -> Any:
    """Parse the value side of ``key=value``: JSON if it parses (numbers, true/false, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    return value


def dict_changes(a: Any, b: Any, where: str = "") -> dict[str, tuple[Any, Any]]:
    """The dotted paths where two JSON-like values (e.g. two configs' ``to_dict()``) differ, each with its two values
    ``(a's, b's)``; nested dicts are compared key by key, anything else whole."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in sorted(set(a) | set(b)):
            out.update(dict_changes(a.get(k), b.get(k), f"{where}.{k}" if where else k))
        return out
    return {} if a == b else {where: (a, b)}


#: fields counted in steps that a run's schedule places relative to its total ``steps`` (see ``Config.override``)
SCHEDULE_FIELDS = ("warmup_steps", "ema_start")


def _scale_schedule(node: dict[str, Any], steps: Any, prefix: str, assigned: list[str]) -> None:
    """Scale ``node``'s schedule fields by ``steps / node["steps"]`` unless assigned (in place)."""
    old = node.get("steps")
    if not isinstance(old, int) or not isinstance(steps, int) or isinstance(steps, bool) or old < 1 or steps < 1:
        return  # not a step count: from_dict reports a wrong type
    for name in SCHEDULE_FIELDS:
        key = f"{prefix}.{name}" if prefix else name
        if name in node and key not in assigned and isinstance(node[name], int):
            node[name] = min(steps, round(node[name] * steps / old))


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every diffprobe config: strict construction from dicts, presets, overrides, JSON round trip."""

    #: Named presets: name -> dict of overrides over the dataclass defaults. Subclasses fill it in.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check invariants between fields; subclasses raise :class:`ConfigError` naming the field."""

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def upgrade(cls, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """A mapping saved by an earlier version of this config, in today's keys (subclasses that renamed a field
        map the old key here, so a run folder written before still loads); the default changes nothing."""
        return data

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, where: str | None = None) -> C:
        """Build from a mapping; unknown keys and wrong types raise :class:`ConfigError` naming the key."""
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        data = cls.upgrade(data)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(fields)}")
        kwargs = {}
        for name, value in data.items():
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
        missing = [
            n for n, f in fields.items()
            if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{where}: missing required key(s) {missing}")
        return cls(**kwargs)

    @classmethod
    def preset(cls: type[C], name: str) -> C:
        """The named preset (see ``PRESETS``); an unknown name is an error listing the known ones."""
        if name not in cls.PRESETS:
            raise ConfigError(f"{cls.__name__}: unknown preset {name!r}; known presets are {sorted(cls.PRESETS)}")
        return cls.from_dict(cls.PRESETS[name], where=f"{cls.__name__}.preset({name!r})")

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        """Read a config saved by :meth:`save`; errors name the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}; restore the file") from e
        try:
            return cls.from_dict(data, where=str(path))
        except ConfigError as e:
            raise ConfigError(f"{e} (fix the file, or restore it)") from e

    # ---- derivation ---------------------------------------------------------------------------
    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed, checked like :meth:`from_dict`."""
        data = self.to_dict()
        data.update({k: _to_jsonable(v) for k, v in changes.items()})
        return type(self).from_dict(data)

    def override(self: C, assignments: Iterable[str], *, scale_schedule: bool = True) -> C:
        """A copy with ``key=value`` assignments applied; dotted keys reach nested configs.

        A changed ``steps`` scales the fields of :data:`SCHEDULE_FIELDS` beside it (warm-up, EMA start) by the same
        ratio unless they are assigned too, so a shortened or lengthened run keeps the shape of its schedule;
        ``scale_schedule=False`` keeps them (a resumed run, whose schedule has already begun)."""
        data = self.to_dict()
        assigned = [item.split("=", 1)[0].strip() for item in assignments if "=" in item]
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value")
            key, text = item.split("=", 1)
            node = data
            parts = key.strip().split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"override {item!r}: {p!r} is not a nested config of {type(self).__name__}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"override {item!r}: unknown key {key!r}; known keys are {sorted(node)}")
            if scale_schedule and parts[-1] == "steps":
                _scale_schedule(node, parse_value(text), ".".join(parts[:-1]), assigned)
            node[parts[-1]] = parse_value(text)
        return type(self).from_dict(data, where=f"{type(self).__name__} (with overrides)")

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (nested configs become dicts, tuples become lists)."""
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically."""
        atomic_write_text(path, self.to_json() + "\n")

    def hash(self, length: int = 12) -> str:
        """Short stable hash of the canonical JSON (same config -> same hash on any machine)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:length]
