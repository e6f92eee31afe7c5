"""Thread counts set on purpose in every process: oversubscription costs 5-10× on small machines
(PLATFORM.md), and torch's default is one thread per core in every process."""

from __future__ import annotations

import os


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads, and OpenMP's for the libraries that read it at load time."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
