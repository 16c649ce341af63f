"""The one way dualscope gets a Dask client: an existing scheduler, or a ``LocalCluster`` of
single-threaded worker processes that this process owns and stops on exit. Used by the
analyses' engine (:mod:`profiler.engine`) and the parallel import
(:mod:`profiler.importers.parallel`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from .errors import InputError

__all__ = ["dask_client"]


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[tuple[Any, bool]]:
    """Yield ``(client, owns_cluster)``. With ``scheduler`` (``tcp://host:8786``) the client
    joins it (its workers are not ours to stop); otherwise a ``LocalCluster`` of ``workers``
    processes (default: the machine's cores) is started and closed, workers first, on exit."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--engine dask needs dask[distributed]: pip install "
                         "'dualscope[scale]'") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, processes=True,
                               threads_per_worker=1, dashboard_address=None)
        client = Client(cluster)
    try:
        yield client, cluster is not None
    finally:
        if cluster is not None:
            cluster.close()  # stops its workers: nothing of ours runs after we return
        client.close()
