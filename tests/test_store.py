import json
import os

import pytest

from pipeline.store import Store, Unit, atomic_write


def test_key_depends_on_params_inputs_version():
    u = Unit("train", "m/seed0/fold0", {"lr": 0.1}, {"folds": "abc"}, 1)
    assert u.key == Unit("train", "m/seed0/fold0", {"lr": 0.1}, {"folds": "abc"}, 1).key
    assert u.key != Unit("train", "m/seed0/fold0", {"lr": 0.2}, {"folds": "abc"}, 1).key
    assert u.key != Unit("train", "m/seed0/fold0", {"lr": 0.1}, {"folds": "abd"}, 1).key
    assert u.key != Unit("train", "m/seed0/fold0", {"lr": 0.1}, {"folds": "abc"}, 2).key


def test_done_only_with_marker_and_stale_reason(tmp):
    store = Store(tmp)
    u = Unit("train", "m", {"lr": 0.1, "nested": {"a": 1}})
    d = store.begin(u)
    (d / "model.safetensors").write_bytes(b"x")
    assert not store.is_done(u)  # outputs present, no marker: not done
    assert store.status(u) == ("missing", "")
    (d / ".attempt-dead").mkdir()
    (d / ".attempt-dead" / "resume.pt").write_bytes(b"x")  # a dead attempt's staging folder
    assert store.status(u, "resume.pt")[0] == "partial"
    with pytest.raises(RuntimeError, match="missing"):
        store.finish(u, 0.0, outputs=["nothing.here"])
    store.finish(u, 0.0, outputs=["model.safetensors"], scores={"acc": 1.0})
    assert store.is_done(u) and store.status(u) == ("done", "")
    changed = Unit("train", "m", {"lr": 0.1, "nested": {"a": 2}})
    state, reason = store.status(changed)
    assert state == "stale" and "nested.a" in reason and "1 -> 2" in reason
    assert json.loads((d / "done.json").read_text())["scores"] == {"acc": 1.0}


def test_atomic_write_leaves_nothing_on_failure(tmp):
    target = tmp / "out.bin"

    def boom(p):
        p.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, boom)
    assert not target.exists() and os.listdir(tmp) == []
