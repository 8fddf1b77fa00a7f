"""Process-level settings that make the CPU engine fast: here, how freed memory goes back to the OS.

Bound computations allocate and free tensors of tens to hundreds of MB every step (the Fast-Lin forward
form's generator blocks, their gradients). glibc serves such sizes with fresh ``mmap`` pages and hands them
back on ``free``, so every step pays a page fault and a zero fill per 4 KiB page again: measured on this
project's 2-core VM (torch 2.14, one thread), an exact-CP training step of the 2×100 MLP took 114 ms with
glibc's defaults and 76 ms with freed memory kept in the heap; MNIST Small 10.2 s → 5.8 s (issue 13).
PyTorch's CPU tuning guide recommends the same cure with jemalloc/tcmalloc; ``mallopt`` does it with the
allocator already loaded.

The cost: the process's resident memory stays at its peak instead of shrinking after a large step (the
memory is reused by the next step). The CLI applies it for every command; the Python API leaves the host
process alone unless the caller calls ``retain_freed_memory()``. ``TIGHTCERT_MALLOC=default`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The largest value mallopt takes (an int): allocations up to 2 GiB come from the heap, and up to 2 GiB of
#: free heap top is kept.
_KEEP = 2 ** 31 - 1
_state = {"applied": None}


def retain_freed_memory() -> bool:
    """Keep freed memory in the process heap (glibc only; a no-op elsewhere). Returns True when applied."""
    if _state["applied"] is not None:
        return _state["applied"]
    applied = False
    if os.environ.get("TIGHTCERT_MALLOC", "").lower() != "default":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP))
        except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): leave the allocator alone
            applied = False
    _state["applied"] = applied
    return applied
