"""Thread counts set on purpose in every process: oversubscription costs 5-10× on small machines
(PLATFORM.md), and torch's default is one thread per core in every process."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads, and OpenMP's for the libraries that read it at load time."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block (0: left as they are)."""
    import torch

    before = torch.get_num_threads()
    if threads in (0, before):
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
