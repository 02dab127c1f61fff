"""Done means done: one rule for `status`, `all` and the scheduler; whole-file fingerprints; fsync before every rename;
a corrupt marker named, never a crash; a redo that starts from nothing; a forced unit redoes what reads it; a done.json
that a shared filesystem shows late is waited for."""

import os

import pytest

from pipeline import dispatch
from pipeline.app import build_plan
from pipeline.config import load_config
from pipeline.scheduler import ensure_done, run_units
from pipeline.store import DONE, Store, Unit, atomic_write

from .conftest import write_config

MODEL = [{"name": "tiny", "backbone": "test_efficientnet", "weights": "none", "epochs": 2, "frozen_epochs": 1}]


def done_unit(tmp, size: int) -> tuple[Store, Unit, bytearray]:
    store, unit = Store(tmp), Unit("train", "m", {"lr": 0.1})
    data = bytearray(os.urandom(size))
    (store.begin(unit) / "model.bin").write_bytes(data)
    store.finish(unit, 0.0, outputs=["model.bin"])
    return store, unit, data


@pytest.mark.parametrize("size, at", [(3 << 19, 5 << 18), (3 << 20, 3 << 19)])  # 1.5 MiB: its 2nd MiB; 3 MiB: middle
def test_a_changed_byte_anywhere_is_seen_by_status_and_by_all_alike(tmp, size, at):
    store, unit, data = done_unit(tmp, size)
    assert store.is_done(unit) and store.status(unit) == ("done", "")
    data[at] ^= 0xFF
    (store.dir(unit) / "model.bin").write_bytes(data)  # same size
    assert not store.is_done(unit)
    assert store.status(unit) == ("broken", "model.bin changed after it was done (checksum); it will be redone")
    data[at] ^= 0xFF
    (store.dir(unit) / "model.bin").write_bytes(data)  # the same bytes again (a restored copy): done
    assert store.is_done(unit)


def test_status_names_an_empty_or_corrupt_marker(tmp):
    store, unit, _ = done_unit(tmp, 10)
    marker = store.dir(unit) / DONE
    marker.write_text("")  # a power loss before the data reached the disk
    state, reason = store.status(unit)
    assert state == "broken" and f"{marker} cannot be read" in reason and not store.is_done(unit)
    other = Unit("train", "m", {"lr": 0.2})  # a sibling whose only earlier marker is that one
    assert store.status(other) == ("missing", "")
    marker.write_text('{"key": ')
    assert store.status(unit)[0] == "broken" and store.status(other) == ("missing", "")


def test_a_file_is_fsynced_before_the_rename_that_publishes_it(tmp, monkeypatch):
    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append("replace") or replace(a, b))
    atomic_write(tmp / "x.bin", lambda p: p.write_bytes(b"x"))
    assert calls == ["fsync", "replace", "fsync"]  # the data, the rename, the folder's entry


def test_a_redo_of_a_broken_unit_starts_from_nothing(tmp, monkeypatch):
    plan = build_plan(load_config(write_config(tmp, "csv", models=MODEL)))
    unit = plan.one("train", model="tiny", seed=0, fold=0)
    finished_state = {}
    finish = Store.finish

    def keep_state(self, u, *args, staging=None, **kw):  # the finished training's resume.pt, as a kill leaves it
        src = (staging or self.dir(u)) / "resume.pt"
        if src.exists():
            finished_state["bytes"] = src.read_bytes()
        return finish(self, u, *args, staging=staging, **kw) if staging else finish(self, u, *args, **kw)

    monkeypatch.setattr(Store, "finish", keep_state)
    ensure_done(plan, [unit])
    d = plan.store.dir(unit)
    good = (d / "model.safetensors").read_bytes()
    for left in (d / "resume.pt", d / ".attempt-dead" / "resume.pt"):  # where a kill after done.json leaves it
        left.parent.mkdir(exist_ok=True)
        left.write_bytes(finished_state["bytes"])
    (d / "model.safetensors").write_bytes(bytes(len(good)))  # the output breaks (same size)
    assert not plan.store.is_done(unit) and plan.state(unit)[0] == "broken"
    ensure_done(plan, [unit])
    assert (d / "model.safetensors").read_bytes() == good  # trained again from nothing: the same weights
    assert (d / "log.txt").read_text().split("== ")[-2].startswith("run "), "the redo resumed a finished state"
    assert not (d / "resume.pt").exists() and not list(d.glob(".attempt-*"))


def test_forcing_a_training_redoes_what_reads_it(tmp):
    plan = build_plan(load_config(write_config(tmp, "csv", models=MODEL)))
    pred = plan.one("predict", model="tiny", seed=0, fold=1)
    train = plan.input(pred, "model")
    ensure_done(plan, [pred])
    before = plan.store.read_marker(pred)["finished_at"]
    run_units(plan, [train], force=[train])  # `./run.sh train --force`: on a GPU its weights differ
    assert not plan.store.is_done(pred)
    state, reason = plan.state(pred)
    assert state == "stale" and f"input {plan.store.dir(train).relative_to(plan.store.root)} was redone" in reason
    ensure_done(plan, [pred])
    assert plan.store.is_done(pred) and plan.store.read_marker(pred)["finished_at"] > before


def test_a_shared_filesystem_that_shows_done_json_late_is_waited_for(tmp, monkeypatch):
    store, unit, _ = done_unit(tmp, 10)
    seen = iter([False, False, True])
    monkeypatch.setattr(store, "is_done", lambda u: next(seen))
    monkeypatch.setattr(dispatch, "POLL_S", 0.01)
    plan = type("P", (), {"store": store})()
    assert dispatch._visible(plan, unit)
    monkeypatch.setattr(store, "is_done", lambda u: False)
    assert not dispatch._visible(plan, unit, tries=3)
