"""How many CPU threads torch uses for a piece of work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the previous count.

    PGD's operations on small networks are too small to share between CPU threads: one thread is as fast when
    the machine is idle and far faster when it is not (benchmarks/results/threads.md; measured 60x on the
    engine's attack while another process held both cores).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
