"""manualgrad.malloc: glibc's mallopt is applied where it exists, and nowhere else."""

import sys
import types

import pytest

from manualgrad import malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is only called on Linux")
def test_reuse_freed_memory_sets_glibcs_three_parameters(monkeypatch):
    calls = []

    def mallopt(param, value):  # glibc's answer, without changing this process's allocator
        calls.append((param, value))
        return 1

    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: types.SimpleNamespace(mallopt=mallopt))
    assert malloc.reuse_freed_memory(pad=1 << 20)
    # top pad, no trimming, and the mmap threshold raised: every setting glibc reads for this
    assert calls == [(-2, 1 << 20), (-1, 2**31 - 1), (-3, 2**31 - 1)]


def test_reuse_freed_memory_says_so_when_glibc_refuses(monkeypatch):
    monkeypatch.setattr(malloc.sys, "platform", "linux")
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: types.SimpleNamespace(mallopt=lambda param, value: 0))
    assert malloc.reuse_freed_memory() is False
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: types.SimpleNamespace())  # musl, no mallopt
    assert malloc.reuse_freed_memory() is False


def test_reuse_freed_memory_leaves_other_platforms_alone(monkeypatch):
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.reuse_freed_memory() is False
