"""The strict config base: unknown keys, wrong types, presets, overrides and JSON round trips."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from diffprobe.config import Config, ConfigError


@dataclass(frozen=True)
class Inner(Config):
    width: int = 8
    ratio: float = 0.5


@dataclass(frozen=True)
class Outer(Config):
    PRESETS = {"big": {"size": 64, "inner": {"width": 32}}}
    size: int = 32
    name: str = "x"
    kind: Literal["image", "video"] = "video"
    shape: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None

    def validate(self) -> None:
        if self.size <= 0:
            raise ConfigError(f"size must be positive, got {self.size}")


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="sise"):
        Outer.from_dict({"sise": 3})
    with pytest.raises(ConfigError, match=r"inner.*widht"):
        Outer.from_dict({"inner": {"widht": 3}})


def test_wrong_types_are_errors() -> None:
    with pytest.raises(ConfigError, match="Outer.size"):
        Outer.from_dict({"size": "big"})
    with pytest.raises(ConfigError, match="kind"):
        Outer.from_dict({"kind": "audio"})
    with pytest.raises(ConfigError, match="size"):
        Outer.from_dict({"size": True})
    with pytest.raises(ConfigError, match="size must be positive"):
        Outer.from_dict({"size": -1})


def test_round_trip_and_hash(tmp_path) -> None:
    cfg = Outer.from_dict({"shape": [3, 4], "inner": {"ratio": 1}, "maybe": 5})
    assert cfg.shape == (3, 4) and cfg.inner.ratio == 1.0 and isinstance(cfg.inner.ratio, float)
    cfg.save(tmp_path / "c.json")
    again = Outer.load(tmp_path / "c.json")
    assert again == cfg and again.hash() == cfg.hash()
    assert cfg.replace(size=33).hash() != cfg.hash()


def test_presets_and_overrides() -> None:
    big = Outer.preset("big")
    assert big.size == 64 and big.inner.width == 32 and big.inner.ratio == 0.5
    with pytest.raises(ConfigError, match="known presets"):
        Outer.preset("huge")
    o = big.override(["inner.width=7", "name=hello", "shape=[5]", "maybe=null"])
    assert o.inner.width == 7 and o.name == "hello" and o.shape == (5,) and o.maybe is None
    with pytest.raises(ConfigError, match="nope"):
        big.override(["inner.nope=1"])


def test_dict_changes_names_each_differing_path_with_both_values() -> None:
    from diffprobe.config import dict_changes

    a = {"dataset": "x", "train": {"steps": 4, "seed": 0, "keep_steps": [1]}, "gone": 1}
    b = {"dataset": "x", "train": {"steps": 6, "seed": 0, "keep_steps": [1, 4]}}
    assert dict_changes(a, b) == {"gone": (1, None), "train.keep_steps": ([1], [1, 4]), "train.steps": (4, 6)}
    assert dict_changes(a, a) == {}
