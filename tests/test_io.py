"""Atomic writes leave the old file intact when the writer fails."""

from __future__ import annotations

import pytest
import torch

from diffprobe.utils.io import atomic_path, atomic_write_text, load_tensors, save_tensors


def test_atomic_write_keeps_old_file_on_error(tmp_path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_tensors_round_trip_and_bad_file(tmp_path) -> None:
    t = {"w": torch.arange(6.0).reshape(2, 3)}
    save_tensors(tmp_path / "w.safetensors", t, {"k": "v"})
    assert torch.equal(load_tensors(tmp_path / "w.safetensors")["w"], t["w"])
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_tensors(tmp_path / "bad.safetensors")


def test_tensors_sha256_is_of_the_contents_only() -> None:
    import torch

    from diffprobe.utils.io import tensors_sha256

    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}
    same = {"b": torch.zeros(3, dtype=torch.bfloat16), "w": torch.arange(6.0).reshape(2, 3).clone()}
    assert tensors_sha256(a) == tensors_sha256(same)  # insertion order does not matter
    assert tensors_sha256(a) != tensors_sha256({**a, "w": a["w"].reshape(3, 2)})  # the shape does
    assert tensors_sha256(a) != tensors_sha256({**a, "b": torch.zeros(3)})  # and the dtype
