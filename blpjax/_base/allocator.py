"""The C allocator's settings for large problems on Linux (glibc): huge pages, memory kept.

XLA's CPU runtime allocates the temporaries of a program at every call. With glibc's defaults
on Linux, those allocations are served with fresh 4 KiB pages (unmapped again when freed), so
every value-and-gradient call of a large problem pays tens of thousands of page faults:
on PyBLP's Petrin problem (13 markets × 210 products × 1,000 agents, 2 CPU cores) ≈ 57,000 per
call, ≈ 40% of the call's time (165 ms). Three glibc tunables remove most of that:

- ``glibc.malloc.hugetlb=1``: malloc asks the kernel for transparent huge pages (2 MiB) on the
  memory it maps (where the system's THP mode is ``madvise``, the common default);
- ``glibc.malloc.mmap_threshold=33554432``: blocks up to 32 MiB come from the heap, not from
  a fresh mapping each time;
- ``glibc.malloc.trim_threshold=17179869184``: freed heap memory is kept for the next call
  instead of being returned to the system.

Same call with them: ≈ 600–1,200 page faults and 107–114 ms. The cost: the process keeps its peak
memory until it exits. Tunables are read when a process starts, so they must be in the
environment of the Python process (``export GLIBC_TUNABLES=...`` before ``python``);
:func:`relaunch_with_tuned_allocator` restarts a script with them (the ``blpjax`` command and the
benchmark scripts do; ``BLPJAX_TUNE_ALLOCATOR=0`` turns that off). Elsewhere (macOS, musl,
glibc older than 2.35, GPUs' device memory) nothing changes.
"""

from __future__ import annotations

import os
import platform
import sys

from . import config

ALLOCATOR_TUNABLES = (
    "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184"
)


def _glibc_supports_hugetlb() -> bool:
    if sys.platform != "linux":
        return False
    lib, version = platform.libc_ver()
    if lib != "glibc" or not version:
        return False
    major, minor = (int(x) for x in version.split(".")[:2])
    return (major, minor) >= (2, 35)


def allocator_tuned() -> bool:
    """Whether this process was started with glibc's huge-page tunable (``GLIBC_TUNABLES``)."""
    return "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "")


def relaunch_with_tuned_allocator(argv: list[str] | None = None) -> None:
    """Re-execute this Python process with :data:`ALLOCATOR_TUNABLES` when that can help.

    Does nothing (returns) off Linux/glibc ≥ 2.35, when ``GLIBC_TUNABLES`` is already set, or when
    ``BLPJAX_TUNE_ALLOCATOR=0``; otherwise it does not return: the process is replaced by the same
    command (``argv``, default ``sys.argv``) with the tunables in its environment. Call it first
    thing in a script's entry point, before any work is done.
    """
    if not config.settings.tune_allocator or "GLIBC_TUNABLES" in os.environ:
        return
    if not _glibc_supports_hugetlb():
        return
    env = dict(os.environ, GLIBC_TUNABLES=ALLOCATOR_TUNABLES)
    if argv is not None:
        args = list(argv)
    else:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name and spec.name != "__main__":  # started with ``python -m module``
            args = ["-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
        else:
            args = list(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], env)
