"""Blockwise tasks on a dask.distributed cluster.

The model and the job description go to every worker once, in a :class:`WorkerPlugin`
(workers that join later, or replace one that died, get it too); tasks then carry only the
job key and a block index. A worker that dies has its tasks rescheduled by the scheduler; a
task that raises is retried (``retries``). Each worker uses one device: with several CUDA
GPUs, worker ``i`` of a :class:`LocalCluster` takes ``cuda:i mod n`` (on SLURM, one GPU per
job via ``CUDA_VISIBLE_DEVICES`` does the same). Torch's intra-op threads are set per worker
process for the plugin's lifetime and restored on teardown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import Cancelled, NSEError, is_cancelled
from . import engine

RETRIES = 3


def _parse_size(text: str | int | None) -> int | None:
    from .memory import parse_size

    return parse_size(text)


class ModelPlugin:
    """Registers a job and its model in each worker process (``distributed.WorkerPlugin``
    protocol: ``setup`` / ``teardown``)."""

    def __init__(self, job: engine.Job, model: Any, threads: int | None = None):
        self.job, self.threads = job, threads
        self.name = f"nse-{job.key}"
        self.config = model.config.to_dict()
        self.state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        self._saved: int | None = None

    def setup(self, worker: Any) -> None:
        import torch

        from ..model import ModelConfig, UNet

        model = UNet(ModelConfig.from_dict(self.config))
        model.load_state_dict(self.state)
        model.eval()
        if self.threads:
            self._saved = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        engine.register(self.job, model, _worker_device(self.job.device, worker))

    def teardown(self, worker: Any) -> None:
        import torch

        engine.unregister(self.job.key)
        if self._saved is not None:
            torch.set_num_threads(self._saved)


def _worker_device(device: str, worker: Any) -> str | None:
    """One GPU per worker when there are several and the device is not pinned."""
    import torch

    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return None
    n = torch.cuda.device_count()
    name = getattr(worker, "name", None)
    try:
        i = int(name)
    except (TypeError, ValueError):
        return None
    return f"cuda:{i % n}" if n > 1 else None


class DaskExecutor:
    """Runs blockwise tasks on a ``Client``; yields their results as they finish."""

    def __init__(self, client: Any, job: engine.Job, model: Any, threads: int | None = None):
        from distributed.diagnostics.plugin import WorkerPlugin

        plugin_cls = type("NSEModelPlugin", (ModelPlugin, WorkerPlugin), {})
        self.client = client
        self.plugin = plugin_cls(job, model, threads)
        try:
            client.register_plugin(self.plugin, name=self.plugin.name)
        except Exception as exc:  # noqa: BLE001 - surfaced as one line
            raise NSEError(f"cannot set up the dask workers: {type(exc).__name__}: "
                           f"{exc}".splitlines()[0]) from None
        self.n_workers = len(client.scheduler_info().get("workers", {}))

    def run(self, fn: Callable, calls: Sequence[tuple], cancel: Any) -> Iterator[Any]:
        from distributed import as_completed

        if not calls:
            return
        futures = [self.client.submit(fn, *args, pure=False, retries=RETRIES,
                                      key=f"nse-{fn.__name__}-{args[0]}-{args[1]}")
                   for args in calls]
        try:
            for fut in as_completed(futures):
                if is_cancelled(cancel):
                    raise Cancelled("blockwise run cancelled")
                yield fut.result()
        except BaseException:
            self.client.cancel(futures)
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the cluster may already be gone
            self.client.unregister_worker_plugin(self.plugin.name)


def local_client(workers: int, memory_limit: int | str | None = None,
                 threads: int | None = None) -> Any:
    """A ``Client`` on a new ``LocalCluster`` of ``workers`` processes, one task each."""
    from distributed import Client, LocalCluster

    if workers < 1:
        raise NSEError(f"--workers must be at least 1, got {workers}")
    limit = _parse_size(memory_limit)
    from .memory import MMAP_THRESHOLD

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           memory_limit=(limit // workers) if limit else "auto",
                           dashboard_address=None,
                           env={"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)})
    return Client(cluster)


def connect(address: str) -> Any:
    """A ``Client`` on an existing scheduler (e.g. one dask-jobqueue started)."""
    from distributed import Client

    try:
        return Client(address, timeout=30)
    except Exception as exc:  # noqa: BLE001
        raise NSEError(f"cannot reach the dask scheduler at {address}: "
                       f"{type(exc).__name__}") from None
