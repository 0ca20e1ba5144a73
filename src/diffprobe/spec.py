"""Specs: how every command names a dataset or a backbone, in one grammar, parsed once into typed objects.

    KIND[:PATH][@KEY=VALUE,...]            e.g.  probeworld:tiny@train_size=2048   tapvid:/data/davis.pkl@mode=strided
                                                 walt:runs/video@step=400          pixels@patch=8,tubelet=2
    DATASET_SPEC#SPLIT                     one split of a dataset, for a task role: davis:/data/davis#val

``PATH`` is a file, a folder or a preset name (``probeworld:tiny``); a kind that reads no files has none. An ``@``
inside PATH is part of the path unless what follows it begins with ``KEY=VALUE``. Option values are parsed as JSON
where they parse (numbers, true/false) and kept as text otherwise; each kind types its options with a
:class:`~diffprobe.config.Config` (:meth:`Spec.typed`), so an unknown option or a wrong type is one error line that
lists the known ones. ``str(spec)`` writes the canonical text, which parses back to the same object.

The backbone form of earlier releases, ``KIND@OPTIONS:PATH`` (``walt@400:runs/video``, the bare value standing for
``step``), is still read, with a one-line notice on stderr naming the spec in today's form; it will be refused in
the next release.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, ClassVar, TypeVar

from diffprobe.config import Config, parse_value
from diffprobe.errors import DiffprobeError

C = TypeVar("C", bound=Config)
S = TypeVar("S", bound="Spec")


class SpecError(DiffprobeError, ValueError):
    """A spec is malformed, names an unknown kind, or gives an option its kind does not take."""


#: the old-form specs already reported this process (each is noted once)
_NOTED: set[str] = set()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _starts_options(text: str) -> bool:
    """Whether the text after an ``@`` in PATH begins ``KEY=VALUE`` options (else the ``@`` is part of the path)."""
    key, eq, _ = text.split(",")[0].partition("=")
    return bool(eq and key.strip()) and "/" not in key


@dataclasses.dataclass(frozen=True)
class Spec:
    """One parsed spec: ``kind``, ``path`` ("" when the kind reads no files) and ``options`` as (key, value) pairs
    in the order given (hashable, so a spec can key a dict or a plan's job)."""

    #: what the spec names, for messages ("dataset", "backbone")
    WHAT: ClassVar[str] = "spec"
    #: an example of the form, for messages
    EXAMPLE: ClassVar[str] = "KIND:PATH@KEY=VALUE"

    kind: str
    path: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls: type[S], text: str | Spec) -> S:
        """The spec ``text`` names (a spec object is returned as it is); a malformed one is a :class:`SpecError`."""
        if isinstance(text, cls):
            return text
        if isinstance(text, Spec):
            raise TypeError(f"expected a {cls.WHAT} spec, got a {text.WHAT} spec {str(text)!r}")
        kind = text
        for sep in (":", "@"):
            kind = kind.partition(sep)[0]
        rest = text[len(kind):]
        if not kind or rest in (":", "@"):
            raise SpecError(f"{cls.WHAT} spec {text!r}: expected {cls.EXAMPLE}")
        if rest.startswith("@") and ":" in rest:
            return cls._parse_old(text, kind, rest[1:])
        path, options = "", ""
        if rest.startswith(":"):
            path = rest[1:]
            head, at, tail = path.rpartition("@")
            if at and _starts_options(tail):
                path, options = head, tail
        elif rest.startswith("@"):
            options = rest[1:]
        return cls(kind, path, cls._options(text, options))

    @classmethod
    def _options(cls, text: str, options: str, bare: str | None = None) -> tuple[tuple[str, Any], ...]:
        out: dict[str, Any] = {}
        for item in filter(None, options.split(",")):
            key, eq, value = item.partition("=")
            if not eq and bare is not None:
                key, value = bare, item
            elif not eq or not key.strip():
                raise SpecError(f"{cls.WHAT} spec {text!r}: option {item!r} is not KEY=VALUE")
            out[key.strip()] = parse_value(value.strip())
        return tuple(out.items())

    @classmethod
    def _parse_old(cls, text: str, kind: str, rest: str) -> Spec:
        raise SpecError(f"{cls.WHAT} spec {text!r}: options go after the path: expected {cls.EXAMPLE}")

    def __str__(self) -> str:
        out = self.kind + (f":{self.path}" if self.path else "")
        if self.options:
            out += "@" + ",".join(f"{k}={_text(v)}" for k, v in self.options)
        return out

    def option_dict(self) -> dict[str, Any]:
        """The options as a dict (key -> parsed value)."""
        return dict(self.options)

    def typed(self, cls: type[C]) -> C:
        """The options as the kind's typed config (its defaults for the options not given); an unknown option or a
        wrong type is an error naming this spec and listing the known options."""
        return cls.from_dict(self.option_dict(), where=f"{self.WHAT} spec {str(self)!r}")

    def with_path(self: S, path: str) -> S:
        return dataclasses.replace(self, path=path)

    def with_options(self: S, **options: Any) -> S:
        """The spec with ``options`` set (added after the others, or replacing a value in place)."""
        merged = {**self.option_dict(), **options}
        return dataclasses.replace(self, options=tuple(merged.items()))


@dataclasses.dataclass(frozen=True)
class DatasetSpec(Spec):
    """A dataset spec, optionally with ``#SPLIT`` naming one of its splits."""

    WHAT: ClassVar[str] = "dataset"
    EXAMPLE: ClassVar[str] = "KIND:PATH[@KEY=VALUE,...][#SPLIT], e.g. probeworld:tiny or tapvid:davis.pkl@mode=strided"

    split: str | None = None

    @classmethod
    def parse(cls, text: str | Spec) -> DatasetSpec:
        if isinstance(text, str):
            base, sep, split = text.rpartition("#")
            if sep and split and base:
                return dataclasses.replace(super().parse(base), split=split)
        return super().parse(text)

    def __str__(self) -> str:
        return super().__str__() + (f"#{self.split}" if self.split else "")

    def whole(self) -> DatasetSpec:
        """The dataset without its ``#SPLIT``."""
        return dataclasses.replace(self, split=None)


@dataclasses.dataclass(frozen=True)
class BackboneSpec(Spec):
    """A backbone spec."""

    WHAT: ClassVar[str] = "backbone"
    EXAMPLE: ClassVar[str] = "KIND:PATH[@KEY=VALUE,...], e.g. walt:runs/video@step=400 or pixels@patch=4"

    @classmethod
    def _parse_old(cls, text: str, kind: str, rest: str) -> BackboneSpec:
        """``KIND@OPTIONS:PATH`` (earlier releases; a bare option value is ``step``), read with a notice."""
        options, _, path = rest.partition(":")
        spec = cls(kind, path, cls._options(text, options, bare="step"))
        if text not in _NOTED:
            _NOTED.add(text)
            print(f"diffprobe: note: backbone spec {text!r} is in the old form KIND@OPTIONS:PATH; write it as "
                  f"{str(spec)!r} (the old form is refused from the next release)", file=sys.stderr)
        return spec
