"""manualgrad.malloc: glibc's mallopt is applied where it exists, and nowhere else."""

import ctypes
import sys
import types

import pytest

from manualgrad import malloc


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallopt"),
                    reason="needs Linux with glibc's mallopt")
def test_reuse_freed_memory_applies_on_glibc(monkeypatch):
    calls = []
    real = ctypes.CDLL(None).mallopt

    def mallopt(param, value):
        calls.append((param, value))
        return real(param, value)

    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: types.SimpleNamespace(mallopt=mallopt))
    assert malloc.reuse_freed_memory(pad=1 << 20)
    # top pad, no trimming, and the mmap threshold raised: every setting glibc reads for this
    assert calls[:3] == [(-2, 1 << 20), (-1, 2**31 - 1), (-3, 2**31 - 1)]


def test_reuse_freed_memory_leaves_other_platforms_alone(monkeypatch):
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.reuse_freed_memory() is False
