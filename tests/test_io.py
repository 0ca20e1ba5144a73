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


def test_every_atomic_write_ends_with_the_umask_mode_whatever_the_writer_does(tmp_path) -> None:
    """safetensors' save_file replaces the temp file (a new inode, mode 0600): the written file still gets the mode
    open() would give it under the umask (0644 under 022): tensors, feature-cache shards, null embeddings."""
    import os
    import stat

    from safetensors.torch import save_file

    from diffprobe.backbones.external import NULL_EMBEDS, null_embeddings
    from diffprobe.features.cache import FeatureCache, FeatureKey

    def mode(path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    old = os.umask(0o022)
    try:
        w = {"w": torch.zeros(2)}
        save_tensors(tmp_path / "t.safetensors", w)
        with atomic_path(tmp_path / "raw.safetensors") as tmp:
            save_file(w, str(tmp))
        cache = FeatureCache(tmp_path / "cache")
        key = FeatureKey("noisy-mean", "toy", "train", "clip", block=0, t=0.0, noise_seed=0)
        cache.write_shard(key, 0, torch.arange(2), torch.zeros(2, 1, 1, 1, 3))
        null_embeddings(tmp_path, ["prompt_embeds"], lambda: {"prompt_embeds": torch.zeros(1, 1, 4)}, "")
        atomic_write_text(tmp_path / "a.txt", "x")
        written = [tmp_path / "t.safetensors", tmp_path / "raw.safetensors", cache.shard_path(key, 0),
                   tmp_path / NULL_EMBEDS, tmp_path / "a.txt"]
        assert {p.name: oct(mode(p)) for p in written} == {p.name: "0o644" for p in written}
        os.umask(0o077)
        save_tensors(tmp_path / "private.safetensors", w)
        assert mode(tmp_path / "private.safetensors") == 0o600
    finally:
        os.umask(old)
