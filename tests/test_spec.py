"""The one spec grammar: parsing, canonical text, the old backbone form's notice, typed options."""

from __future__ import annotations

import dataclasses

import pytest

from diffprobe.backbones.registry import load_backbone, parse_backbone_spec
from diffprobe.config import Config, ConfigError
from diffprobe.spec import BackboneSpec, DatasetSpec, SpecError


@pytest.mark.parametrize("text, kind, path, options", [
    ("probeworld:tiny", "probeworld", "tiny", ()),
    ("probeworld:tiny@train_size=2048,height=48", "probeworld", "tiny", (("train_size", 2048), ("height", 48))),
    ("tapvid:/d/davis.pkl@mode=strided", "tapvid", "/d/davis.pkl", (("mode", "strided"),)),
    ("videos:/data/me@host/clips", "videos", "/data/me@host/clips", ()),  # an @ not followed by options: the path
    ("videos:/data/me@host/clips@fps=2.5,on_bad=skip", "videos", "/data/me@host/clips",
     (("fps", 2.5), ("on_bad", "skip"))),
    ("walt:{twin:video}@step=400", "walt", "{twin:video}", (("step", 400),)),
    ("pixels@patch=8,tubelet=2", "pixels", "", (("patch", 8), ("tubelet", 2))),
    ("pixels", "pixels", "", ()),
])
def test_one_grammar_parses_and_writes_back(text: str, kind: str, path: str, options: tuple) -> None:
    spec = BackboneSpec.parse(text)
    assert (spec.kind, spec.path, spec.options) == (kind, path, options)
    assert str(spec) == text and BackboneSpec.parse(str(spec)) == spec
    assert DatasetSpec.parse(text).options == options


def test_a_dataset_spec_may_name_a_split_and_compose_without_string_edits() -> None:
    spec = DatasetSpec.parse("davis:/data/davis@size=64#val")
    assert (spec.kind, spec.path, spec.option_dict(), spec.split) == ("davis", "/data/davis", {"size": 64}, "val")
    assert str(spec) == "davis:/data/davis@size=64#val" and str(spec.whole()) == "davis:/data/davis@size=64"
    assert str(spec.with_path("/elsewhere").with_options(size=128, stride=2)) == \
        "davis:/elsewhere@size=128,stride=2#val"


def test_the_old_backbone_form_is_read_with_one_notice(capsys) -> None:
    spec = BackboneSpec.parse("walt@400:runs/video-old-form")
    assert spec == BackboneSpec("walt", "runs/video-old-form", (("step", 400),))
    BackboneSpec.parse("walt@400:runs/video-old-form")
    err = capsys.readouterr().err.splitlines()
    assert err == ["diffprobe: note: backbone spec 'walt@400:runs/video-old-form' is in the old form "
                   "KIND@OPTIONS:PATH; write it as 'walt:runs/video-old-form@step=400' (the old form is refused "
                   "from the next release)"]
    assert BackboneSpec.parse("sd@dtype=bf16,batch_size=2:/m/sd-old") == BackboneSpec(
        "sd", "/m/sd-old", (("dtype", "bf16"), ("batch_size", 2)))
    with pytest.raises(SpecError, match="options go after the path"):
        DatasetSpec.parse("davis@size=64:/data/davis")


@pytest.mark.parametrize("text, message", [
    ("", "expected KIND"), (":x", "expected KIND"), ("walt:", "expected KIND"),
    ("probeworld:tiny@height=48,width", "option 'width' is not KEY=VALUE"),
])
def test_malformed_specs_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        DatasetSpec.parse(text)
    assert "\n" not in str(err.value)


def test_typed_options_list_the_known_ones() -> None:
    @dataclasses.dataclass(frozen=True)
    class Opts(Config):
        size: int = 4
        mode: str = "first"

    assert BackboneSpec.parse("x:p@size=8").typed(Opts) == Opts(size=8)
    with pytest.raises(ConfigError, match=r"backbone spec 'x:p@sise=8': unknown key\(s\) \['sise'\]; known keys are "
                                          r"\['mode', 'size'\]"):
        BackboneSpec.parse("x:p@sise=8").typed(Opts)
    with pytest.raises(ConfigError, match="size"):
        BackboneSpec.parse("x:p@size=big").typed(Opts)


def test_the_backbone_registry_checks_kind_and_path() -> None:
    assert parse_backbone_spec("latents:runs/tok") == BackboneSpec("latents", "runs/tok")
    with pytest.raises(SpecError, match=r"unknown kind 'nope'; known kinds are \["):
        parse_backbone_spec("nope:x")
    with pytest.raises(SpecError, match="expected KIND:PATH"):
        parse_backbone_spec("walt")
    with pytest.raises(SpecError, match="reads no files"):
        load_backbone("pixels:somewhere", device=None)
