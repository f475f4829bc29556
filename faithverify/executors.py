"""Where the expensive per-item work runs (a point's refinement, a suite's instance): in this process, in a
local process pool, or on a Ray cluster, behind one interface.

Every executor runs ``fn(shared, item)`` for the items it is given. ``shared`` (the two networks of a pair)
is sent once per worker, never once per task: to a pool's workers by its initializer, to Ray's through the
object store (``ray.put`` once; each worker fetches it on its first task and keeps it). ``submit`` queues an
item under a key; ``results`` yields ``(key, result)`` in whatever order the items finish, either only those
finished now (``wait=False``, so the driver can go on screening the next batch meanwhile) or all outstanding
ones (``wait=True``). ``close`` cancels what is outstanding: it runs on Ctrl-C, and the interrupt propagates.

Results come back only to the driver, which alone writes the results file; so a record is written exactly once
whatever happens to the workers. On Ray, a task whose worker dies is run again (``max_retries``, for system
failures only: an exception raised by ``fn`` is not retried), and the driver sees one result per key.

Ray is imported only when ``--ray`` is given: without it nothing here touches Ray.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import os
import queue
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

from faithverify import interrupt
from faithverify.errors import FaithverifyError

# The task function: fn(shared, item) -> result. A module-level function, so that it pickles by reference.
TaskFn = Callable[[Any, Any], Any]

RAY_INSTALL_HINT = "pip install 'faithverify[ray]'"
# Ray reruns a task whose worker process died (killed, out of memory, node lost) up to this many times; an
# exception raised by the task itself is not retried (it would only happen again).
RAY_MAX_RETRIES = 3
# How long a blocking wait sleeps between checks, so that Ctrl-C is seen promptly on every platform.
_POLL_SECONDS = 0.5


class ExecutorError(FaithverifyError):
    """Ray is missing or unreachable, or a task's workers kept dying."""


@dataclass(frozen=True)
class ExecutorSpec:
    """Where tasks run: ``ray`` None runs them here (``jobs`` 1) or in a local process pool of ``jobs``;
    ``ray`` "local" starts a Ray instance on this machine with ``jobs`` CPUs, "auto" joins the cluster this
    machine belongs to, and ``HOST:PORT`` or ``ray://HOST:PORT`` a given one."""

    jobs: int = 1
    ray: str | None = None


class Executor(ABC):
    """Runs ``fn(shared, item)`` per submitted item; see the module docstring."""

    def __init__(self, fn: TaskFn, shared: Any) -> None:
        self.fn = fn
        self.shared = shared

    @abstractmethod
    def submit(self, key: Hashable, item: Any) -> None:
        """Queue ``item``; its result comes back from :meth:`results` under ``key``."""

    @abstractmethod
    def results(self, *, wait: bool) -> Iterator[tuple[Hashable, Any]]:
        """``(key, result)`` of finished items, in the order they finish; with ``wait`` until none is left."""

    @property
    @abstractmethod
    def outstanding(self) -> int:
        """Items submitted whose result has not been yielded yet."""

    @abstractmethod
    def close(self) -> None:
        """Cancel what is outstanding and release the workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_executor(fn: TaskFn, shared: Any, spec: ExecutorSpec) -> Executor:
    """The executor ``spec`` names, ready for tasks."""
    if spec.ray is not None:
        return RayExecutor(fn, shared, spec.ray, spec.jobs)
    if spec.jobs > 1:
        return PoolExecutor(fn, shared, spec.jobs)
    return SerialExecutor(fn, shared)


# --- in this process ------------------------------------------------------------------------------------------


class SerialExecutor(Executor):
    """Runs each item when results are asked for, in submission order: the one-process default."""

    def __init__(self, fn: TaskFn, shared: Any) -> None:
        super().__init__(fn, shared)
        self._queue: list[tuple[Hashable, Any]] = []

    def submit(self, key: Hashable, item: Any) -> None:
        self._queue.append((key, item))

    def results(self, *, wait: bool) -> Iterator[tuple[Hashable, Any]]:
        # Nothing runs in the background here, so even wait=False runs the queue: otherwise the work would pile
        # up until the end of the run.
        while self._queue:
            key, item = self._queue.pop(0)
            yield key, self.fn(self.shared, item)

    @property
    def outstanding(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self._queue.clear()


# --- a local process pool -------------------------------------------------------------------------------------

_POOL_TASK: tuple[TaskFn, Any] | None = None


def _one_thread() -> None:
    """A worker has one CPU (a pool process each, num_cpus=1 on Ray): torch must not spread over the node's."""
    import torch

    torch.set_num_threads(1)


def _init_pool_worker(fn: TaskFn, shared: Any) -> None:
    global _POOL_TASK
    _one_thread()
    _POOL_TASK = (fn, shared)


class WorkerInterrupted(Exception):
    """A worker's solver saw a Ctrl-C (Gurobi catches SIGINT itself): an ordinary exception, so that the worker
    survives to be terminated by the driver instead of dying with a traceback."""


def _run_in_pool(item: Any) -> Any:
    assert _POOL_TASK is not None
    fn, shared = _POOL_TASK
    try:
        return fn(shared, item)
    except KeyboardInterrupt:
        raise WorkerInterrupted("interrupted") from None


class PoolExecutor(Executor):
    """A ``multiprocessing`` pool on this machine; ``shared`` goes to each worker once, by its initializer."""

    def __init__(self, fn: TaskFn, shared: Any, jobs: int) -> None:
        super().__init__(fn, shared)
        # spawn, not fork: a forked child would inherit torch's OpenMP state mid-flight. The workers ignore
        # SIGINT (a terminal sends it to them too): the driver handles Ctrl-C and terminates them.
        with interrupt.workers_ignore_sigint():
            self._pool = multiprocessing.get_context("spawn").Pool(
                jobs, initializer=_init_pool_worker, initargs=(fn, shared)
            )
        # Filled by the pool's result thread, drained by the driver: (key, result, error).
        self._done: queue.Queue[tuple[Hashable, Any, BaseException | None]] = queue.Queue()
        self._outstanding = 0

    def submit(self, key: Hashable, item: Any) -> None:
        self._pool.apply_async(
            _run_in_pool,
            (item,),
            callback=lambda result: self._done.put((key, result, None)),
            error_callback=lambda error: self._done.put((key, None, error)),
        )
        self._outstanding += 1

    def results(self, *, wait: bool) -> Iterator[tuple[Hashable, Any]]:
        while self._outstanding:
            try:
                key, result, error = self._done.get(block=wait, timeout=_POLL_SECONDS if wait else None)
            except queue.Empty:
                if wait:
                    continue
                return
            self._outstanding -= 1
            if isinstance(error, WorkerInterrupted):
                raise KeyboardInterrupt
            if error is not None:
                raise error
            yield key, result

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def close(self) -> None:
        # terminate, not close: on an interrupt the outstanding tasks are abandoned, not awaited.
        self._pool.terminate()
        self._pool.join()


# --- Ray ------------------------------------------------------------------------------------------------------


def import_ray(*, local: bool = False) -> ModuleType:
    """Ray, or the one-line error that says how to install it."""
    if local:
        # A Ray started for this machine only needs no address but the loopback: with this switch
        # ray._private.services.get_node_ip_address() answers 127.0.0.1 (it is read once, when Ray is first
        # imported), so the GCS, the raylet and the workers listen and talk on 127.0.0.1 alone, not on the
        # machine's network address (the default, for clusters). A user's own setting wins.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def connect_ray(address: str, jobs: int = 1) -> bool:
    """Connect this process to Ray (see :class:`ExecutorSpec`); True when this call connected, so the caller
    should disconnect (``ray.shutdown()``) when done. A process already connected (a test, a notebook, a
    script running several certify calls) keeps its connection, whatever ``address`` says."""
    ray = import_ray(local=address == "local")
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    try:
        if address == "local":
            # Only this machine: a fresh instance with `jobs` CPUs and no dashboard (nothing to serve).
            ray.init(address="local", num_cpus=jobs, include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ExecutorError(f"cannot connect to Ray at {address!r}: {str(exc).splitlines()[0]}") from None
    return True


# Per Ray worker process: the shared value of the last executor whose tasks it ran, by object id. A worker runs
# one driver's tasks at a time, so one entry suffices, and a new pair replaces the old one.
_RAY_SHARED: dict[str, Any] = {}


def _run_on_ray(fn: TaskFn, shared_box: list[Any], item: Any) -> Any:
    # shared_box holds the ObjectRef inside a list: Ray resolves only top-level ObjectRef arguments, so this
    # worker fetches (and deserialises) the shared value once, on its first task, instead of once per task.
    import ray

    ref = shared_box[0]
    key = ref.hex()
    if key not in _RAY_SHARED:
        _one_thread()  # Ray also sets OMP_NUM_THREADS=1 for a num_cpus=1 worker; this does not depend on it
        _RAY_SHARED.clear()
        # ray.get maps numpy arrays straight from the object store, read-only: torch warns on them, and a write
        # would fault. A copy per worker (as a pool worker has) costs one fetch's memory, once.
        _RAY_SHARED[key] = copy.deepcopy(ray.get(ref))
    return fn(_RAY_SHARED[key], item)


class RayExecutor(Executor):
    """Tasks on a Ray cluster: one CPU each, retried when their worker dies, cancelled on close."""

    def __init__(self, fn: TaskFn, shared: Any, address: str, jobs: int = 1) -> None:
        super().__init__(fn, shared)
        self._ray = import_ray(local=address == "local")
        self._disconnect = connect_ray(address, jobs)
        try:
            self._shared_box = [self._ray.put(shared)]
            # num_cpus=1: the refinement runs on one thread (the task sets it), so a node with N CPUs runs N
            # tasks at once. max_retries counts system failures (a worker process that died) only.
            self._task = self._ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES)(_run_on_ray)
        except BaseException:
            self._shutdown()
            raise
        self._pending: dict[Any, Hashable] = {}  # ObjectRef -> key

    def submit(self, key: Hashable, item: Any) -> None:
        ref = self._task.remote(self.fn, self._shared_box, item)
        self._pending[ref] = key

    def results(self, *, wait: bool) -> Iterator[tuple[Hashable, Any]]:
        ray = self._ray
        while self._pending:
            refs = list(self._pending)
            if wait:
                ready, _ = ray.wait(refs, num_returns=1, timeout=_POLL_SECONDS)
            else:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if not ready and not wait:
                return
            for ref in ready:
                key = self._pending.pop(ref)
                yield key, self._get(ref)

    def _get(self, ref: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # The task's own exception (a soundness check, a solver error): raised here as itself, so that
            # the CLI reports it as it would from the local pool.
            raise exc.cause from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as exc:
            raise ExecutorError(
                f"a Ray task failed {RAY_MAX_RETRIES + 1} times ({type(exc).__name__}); the records written so "
                "far are kept: rerun with --resume"
            ) from None

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        # On Ctrl-C (or an error) the outstanding tasks are cancelled: force=True stops running ones by killing
        # their worker (a solve deep in HiGHS does not see a KeyboardInterrupt), and a cancelled task is not
        # retried. Ray starts fresh workers as needed; nothing but the cached pair lives in them.
        for ref in self._pending:
            # An error here means it already finished, or the cluster is going away: nothing left to cancel.
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._pending.clear()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._disconnect:
            self._ray.shutdown()
            self._disconnect = False


# The --ray option's help, one text for every command that takes it (certify, bench).
RAY_OPTION_HELP = (
    "Run the tasks (certify: each point's refinement; bench: each instance) on Ray, one CPU each; the driver "
    "alone writes the results. "
    "'local' starts Ray on this machine only, with --jobs CPUs; 'auto' joins the cluster this machine belongs "
    f"to; HOST:PORT or ray://HOST:PORT a given one. Needs {RAY_INSTALL_HINT}."
)
