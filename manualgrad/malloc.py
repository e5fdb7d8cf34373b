"""Keep freed memory for reuse on Linux (glibc): a measured speed-up of XLA:CPU training steps.

XLA:CPU allocates each run's temporary buffers afresh. With glibc's defaults a large block
that is freed goes back to the kernel (``munmap``, or a trim of the heap), so the next step
touches brand-new pages: one page fault and a page of zeroing per 4 KiB, every step. For the
MNIST CNN at batch 128 (47 MB of XLA temporaries) that was 30% of the step: 65.3 ms with
glibc's defaults, 45.7 ms with :func:`reuse_freed_memory` (BENCHMARKS.md, CNN speed), which
sets glibc's ``mallopt`` so that freed blocks stay in the process: the step then reuses warm
pages. The price is memory: the process keeps
up to its high-water mark (plus ``pad``) instead of returning it. This is what the environment
variables ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_`` do, set
from Python after start-up; other allocators and platforms are left alone.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["reuse_freed_memory"]

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def reuse_freed_memory(pad: int = 512 << 20) -> bool:
    """Make glibc keep freed memory (and ``pad`` bytes of slack) instead of returning it to the
    kernel: blocks below the largest mmap threshold glibc accepts come from the heap, and the heap
    is not trimmed. Returns whether it was applied: False off Linux or without glibc's ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = mallopt(_M_TOP_PAD, pad) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    # glibc caps the mmap threshold (32 MiB on 64-bit before 2.35): try the largest first
    applied = applied and any(mallopt(_M_MMAP_THRESHOLD, t) == 1 for t in (2**31 - 1, 32 << 20))
    return applied
