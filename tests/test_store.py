"""The SQLite results store: cells are all-or-nothing, queryable, exported to CSV."""

from __future__ import annotations

import csv

import pytest

from diffprobe.study.store import Cell, ResultsStore


def _cell(**kw) -> Cell:
    base = dict(study="s", backbone="walt-video", mode="video", checkpoint_step=100, block=3, t=200.0,
                noise_seed=0, ensemble=1, task="action", dataset="d0", clips="all", probe_seed=0,
                config_hash="abc", identity="walt-video-123")
    base.update(kw)
    return Cell(**base)


def test_add_query_has_and_reopen(tmp_path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        assert not store.has(_cell())
        store.add(_cell(), {"top1": 0.5, "loss": 1.25})
        store.add(_cell(t=0.0), {"top1": 0.75})
        assert store.has(_cell()) and not store.has(_cell(block=4))
    with ResultsStore(path) as store:  # persisted
        rows = store.query(task="action", metric="top1")
        assert [(r["t"], r["value"]) for r in rows] == [(0.0, 0.75), (200.0, 0.5)]
        assert len(store.query(t=[0.0, 200.0])) == 3
        with pytest.raises(ValueError, match="nope"):
            store.query(nope=1)
        store.add(_cell(), {"top1": 0.6})  # re-adding replaces, never duplicates
        assert [r["value"] for r in store.query(t=200.0, metric="top1")] == [0.6]
        store.export_csv(tmp_path / "results.csv")
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["task"] == "action" and float(rows[0]["value"]) == 0.75


def test_corrupt_store_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ValueError, match="bad.sqlite"):
        ResultsStore(bad)


def test_dataset_specs_are_stored_with_the_cell(tmp_path) -> None:
    path = tmp_path / "results.sqlite"
    specs = {"train": "kinetics:/data/a#train", "val": "kinetics:/data/a#val", "test": "kinetics:/data/a#test"}
    with ResultsStore(path) as store:
        store.add(_cell(), {"top1": 0.5})
        assert store.data_specs() == {}  # no spec given, no table made: an older store reads the same way
        store.add(_cell(dataset="dA"), {"top1": 0.5}, data_specs=specs)
        with pytest.raises(TypeError):  # a spec that cannot be written undoes the whole cell
            store.add(_cell(dataset="dB"), {"top1": 0.7}, data_specs={"train": object()})
        assert not store.has(_cell(dataset="dB"))
    with ResultsStore(path) as store:
        assert store.data_specs() == {"dA": specs}
        assert [r["dataset"] for r in store.query(metric="top1")] == ["d0", "dA"]  # the cell's key is unchanged
        store.add_data_specs("d0", {"test": "videos:/clips"})  # naming a cell stored before specs were given
        assert store.data_specs() == {"dA": specs, "d0": {"test": "videos:/clips"}}
