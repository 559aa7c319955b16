"""`ProcessHandles`: a dataset's open volumes are opened once per process, never pickled."""

from __future__ import annotations

import os
import pickle

from sam4em.data.handles import ProcessHandles


def test_opened_once_per_process_and_never_pickled(monkeypatch):
    opened = []
    handles: ProcessHandles[str] = ProcessHandles()

    def open_(name: str):
        return lambda: opened.append(name) or f"handle of {name}"

    assert handles.get(0, open_("a")) == "handle of a"
    assert handles.get(0, open_("again")) == "handle of a"
    assert opened == ["a"]
    copy = pickle.loads(pickle.dumps(handles))  # a spawned DataLoader worker's copy
    assert copy.get(0, open_("b")) == "handle of b"
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)  # a forked worker keeps the parent's dict
    assert handles.get(0, open_("c")) == "handle of c"
    assert opened == ["a", "b", "c"]
