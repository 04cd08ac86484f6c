"""Executors: the one layer that runs work in parallel, for extraction, fine-tuning and sweeps; the only module
that imports dask (`tests/test_architecture.py` asserts it).

An executor takes a picklable function and a list of plain task specs and yields `(task, result)` pairs as
tasks finish. `serial` runs them in this process (the reference every other executor must match bit for bit);
`dask` runs them on a local process cluster, or on an existing scheduler given by address (many machines
sharing one filesystem). Tasks carry paths, names, config dicts and ids only, so nothing heavy is pickled;
each worker process loads its extractor once (pipeline/extract/shardrun.py). GPUs are a resource option.

Devices: on CUDA the local cluster runs one worker process per visible GPU (each holds one CUDA context
and its encoders; `worker_device` gives worker i the GPU i, and decoding runs in threads
inside the worker, pipeline/extract/overlap.py). With --scheduler, start one `dask worker --nworkers 1` per
GPU with CUDA_VISIBLE_DEVICES set to that GPU (or integer --name 0..N-1 on one machine).

A task that raises stops the run: the remaining tasks are cancelled, completed shards stay on disk
(they are written atomically), and the next run resubmits only what is missing.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from mer_pipe.common.devices import local_gpus
from mer_pipe.common.errors import ConfigError, MerPipeError

EXECUTORS = ("serial", "dask")
DEFAULT_EXECUTOR = "dask"

# Worker processes must not each spawn one BLAS/OpenMP thread per core: with N workers on N cores
# that oversubscribes the machine N-fold. torch threads are set per task spec as well.
_SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass(frozen=True)
class ExecutorConfig:
    """How to run tasks. Never part of a cache key."""

    kind: str = DEFAULT_EXECUTOR
    workers: int | None = None  # None: one per CPU core, at most 4 (for the local dask cluster)
    scheduler: str | None = None  # tcp://host:8786 -> use that cluster instead of starting one

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"--executor {self.kind!r} is not known; choose one of: {', '.join(EXECUTORS)}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers {self.workers} must be >= 1")
        if self.scheduler is not None and self.kind != "dask":
            raise ConfigError(f"--scheduler {self.scheduler} needs --executor dask (got --executor {self.kind})")
        if self.scheduler is not None:
            check_scheduler_address(self.scheduler)


SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# What one local worker process needs at most for the heaviest extractor (swin/wav2vec2 + a decoded batch).
WORKER_MEMORY_BYTES = 2 * 1024**3


def check_scheduler_address(address: str) -> str | None:
    """Refuse an address dask cannot dial; return a one-line security note when it is not local and not TLS."""
    scheme, sep, rest = address.partition("://")
    host = rest.rsplit(":", 1)[0] if sep else ""
    if not sep or scheme not in SCHEDULER_SCHEMES or not host:
        raise ConfigError(f"--scheduler {address!r} is not a dask address; use SCHEME://HOST:PORT with SCHEME one of "
                          f"{', '.join(SCHEDULER_SCHEMES)} (e.g. tcp://10.0.0.5:8786, as printed by `dask scheduler`)")
    if scheme != "tls" and host not in LOCAL_HOSTS:
        return (f"note: dask exchanges pickled tasks and results with {address}; use it only on a trusted network, or "
                "start the cluster with TLS (tls:// addresses and dask's distributed.comm.tls security settings)")
    return None


def cap_workers(requested: int) -> tuple[int, str | None]:
    """`requested` local worker processes, capped at the cores (one thread each) and at the memory they need."""
    cores = os.cpu_count() or 1
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    by_mem = max(1, mem // WORKER_MEMORY_BYTES) if mem else requested
    cap = max(1, min(cores, by_mem))
    if requested <= cap:
        return requested, None
    return cap, (f"mer-pipe: --workers {requested} capped at {cap}: this machine has {cores} cores"
                 + (f" and {mem / 1024**3:.0f} GiB of memory (about {WORKER_MEMORY_BYTES // 1024**3} GiB per worker)" if mem else "")
                 + "; more worker processes would only compete for them")


# Task functions of ours whose failures the client re-raises as one line: the worker's own "Compute Failed
# ... Traceback" dump of them is noise printed before that line.
OWN_TASKS = ("run_shard-", "run_finetune_task-")


class _DropOwnTaskDumps(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except (TypeError, ValueError):
            return True
        return not (msg.startswith("Compute Failed") and any(f"Key:       {t}" in msg for t in OWN_TASKS))


def quiet_task_dumps(dask_worker: Any = None) -> None:
    """In a worker process: drop the "Compute Failed" traceback dump of mer-pipe's own tasks (the client
    re-raises their error as one line); every other worker message (kills, memory) stays. Idempotent."""
    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _DropOwnTaskDumps) for f in log.filters):
        log.addFilter(_DropOwnTaskDumps())


def ignore_sigint(dask_worker: Any = None) -> None:
    """In a local worker process: ignore Ctrl-C. The terminal sends it to the whole process group; workers
    dying under their nanny print tornado / asyncio tracebacks. The driver alone handles it and closes
    the cluster. (Not for remote workers: their owner's Ctrl-C must keep working.)"""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def install_quiet_dumps(client: Any, local: bool = False) -> None:
    """Install `quiet_task_dumps` (and, for our own local cluster, `ignore_sigint`) on every current and
    future worker of the client's cluster."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietTaskDumps(WorkerPlugin):
        name = "mer-pipe-quiet-task-dumps"

        def __init__(self, local: bool) -> None:
            self.local = local

        def setup(self, worker: Any) -> None:
            quiet_task_dumps(worker)
            if self.local:
                ignore_sigint(worker)

    try:
        client.register_plugin(QuietTaskDumps(local), name=QuietTaskDumps.name)
    except (OSError, TimeoutError, ValueError, TypeError):
        pass  # cosmetic: an older or unusual cluster keeps its dumps, the one-line error still follows


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class Executor:
    """Base: `run(fn, tasks)` yields `(task, fn(task))` in completion order; `close()` frees resources."""

    name = "base"
    n_workers = 1
    # True when tasks run in a process of their own (so the task should pin torch to one thread).
    isolated = False

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialExecutor(Executor):
    """Runs tasks one after another in this process, in the order given. The reference."""

    name = "serial"

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        for task in tasks:
            yield task, fn(task)


class DaskExecutor(Executor):
    """A dask.distributed client: a local process cluster, or an existing scheduler by address.

    Local cluster: `LocalCluster(processes=True, n_workers=N, threads_per_worker=1)`, so one task
    per process and no GIL or torch-thread contention between tasks.
    """

    name = "dask"
    isolated = True

    def __init__(self, workers: int | None = None, scheduler: str | None = None, connect_timeout: str = "20s") -> None:
        from distributed import Client, LocalCluster

        self._cluster = None
        if scheduler:
            note = check_scheduler_address(scheduler)
            if note:
                print(f"mer-pipe: {note}", file=sys.stderr)
            try:
                self._client = Client(scheduler, timeout=connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise ConfigError(
                    f"cannot reach the dask scheduler at --scheduler {scheduler} ({exc}); start one with "
                    "`dask scheduler` and workers with `dask worker ADDRESS` on machines that see the same "
                    "cache directory, or drop --scheduler to use a local cluster"
                ) from None
            install_quiet_dumps(self._client)
            self.n_workers = max(1, len(self._client.scheduler_info().get("workers", {})))
            self._where = scheduler
        else:
            import dask

            n, note = cap_workers(workers or default_workers())
            if note:
                print(note, file=sys.stderr)
            # Worker processes import torch before they report in; on a loaded machine that can pass
            # dask's 30 s default and the nanny gives up, so allow more time to start.
            with dask.config.set({"distributed.comm.timeouts.connect": "120s"}):
                self._cluster = LocalCluster(
                    processes=True, n_workers=n, threads_per_worker=1, host="127.0.0.1",
                    dashboard_address=":0",  # a free port: None still means 8787 (a warning when taken)
                    silence_logs=logging.ERROR,  # shutdown chatter (cancelled tasks, slow exits) is not news
                    env=dict(_SINGLE_THREAD_ENV))
            self._client = Client(self._cluster)
            install_quiet_dumps(self._client, local=True)
            self.n_workers = n
            self._where = f"local, {n} worker process{'es' if n != 1 else ''}"

    def describe(self) -> str:
        return f"dask ({self._where})"

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        from distributed import as_completed

        if not tasks:
            return
        # pure=False: a task's identity is its shard, not a hash of its arguments; priorities keep
        # roughly the submission (manifest) order so shards finish front to back.
        futures = {}
        for i, task in enumerate(tasks):
            fut = self._client.submit(fn, task, pure=False, priority=len(tasks) - i)
            futures[fut.key] = (fut, task)
        from distributed.scheduler import KilledWorker

        try:
            for fut in as_completed([f for f, _ in futures.values()]):
                _, task = futures[fut.key]
                try:
                    result = fut.result()  # re-raises the task's exception here
                except KilledWorker as exc:
                    # dask already retried it on other workers: the task itself kills its process.
                    raise MerPipeError(
                        f"a task ({_describe(task)}) killed its worker process on every retry ({exc}); likely out "
                        "of memory: rerun with fewer --workers or a smaller --batch-size (completed shards are kept)"
                    ) from None
                yield task, result
                fut.release()
        finally:
            # On an error, Ctrl-C or an abandoned generator: stop what is still queued or running.
            pending = [f for f, _ in futures.values() if not f.done()]
            if pending:
                self._client.cancel(pending)

    def close(self) -> None:
        # A second Ctrl-C must not cut the shutdown short half-way (that is what prints tracebacks).
        with _sigint_ignored():
            if self._cluster is not None:
                try:  # our own workers: their shutdown races (heartbeats to a closed scheduler) are not news
                    self._client.run(_quiet_shutdown, wait=True)
                except Exception:  # noqa: BLE001 - cosmetic, and the workers may already be gone
                    pass
            try:
                self._client.close()
            finally:
                if self._cluster is not None:
                    self._cluster.close()


def _quiet_shutdown() -> None:
    """In a local worker about to be closed: only critical messages from here on."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block (main thread only; elsewhere a no-op), then the old handler back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _describe(task: Any) -> str:
    path = getattr(task, "path", None)
    return f"shard {path}" if path else repr(task)[:200]


def make_executor(config: ExecutorConfig, device: str | None = None) -> Executor:
    """Build the executor `config` names (starts a local cluster for `dask` without a scheduler). On CUDA
    the local cluster has one worker per GPU (fewer when --workers says so), never more: a second worker on
    a GPU would hold a second CUDA context and a second copy of every encoder."""
    if config.kind == "serial":
        return SerialExecutor()
    if config.scheduler:
        return DaskExecutor(workers=config.workers, scheduler=config.scheduler)
    workers, gpus = config.workers, local_gpus(device)
    if gpus:
        if workers is not None and workers > gpus:
            print(f"mer-pipe: --workers {workers} capped at {gpus} on --device {device}: one worker process per GPU "
                  "(decoding runs in threads inside it)", file=sys.stderr)
        workers = min(workers or gpus, gpus)
    try:
        return DaskExecutor(workers=workers)
    except (OSError, TimeoutError, RuntimeError) as exc:
        # Results never depend on the executor (serial is the reference), so a local cluster that
        # cannot start is not worth failing a run for; say so and carry on in-process.
        print(f"mer-pipe: warning: local dask cluster did not start ({type(exc).__name__}: {exc}); "
              "running serially instead (pass --executor serial to skip this attempt)", file=sys.stderr)
        return SerialExecutor()


# ---- what a task asks of the worker it runs on -------------------------------------------------------------

def worker_index() -> int | None:
    """The integer name of the dask worker running this code (a local cluster's workers are 0..N-1), or None
    outside a worker or for a worker named otherwise."""
    try:
        from distributed import get_worker

        return int(get_worker().name)
    except (ImportError, ValueError, TypeError):
        return None


def worker_device(device: str, gpus: int | None = None) -> str:
    """`device` for this process: a plain "cuda" in a dask worker named by an integer becomes
    cuda:<name mod GPUs> (`gpus`, default every visible one), so N workers on N GPUs hold one CUDA context
    each; a worker started with CUDA_VISIBLE_DEVICES=<one GPU> sees one device and keeps cuda:0. Anything
    else is returned unchanged."""
    if device != "cuda":
        return device
    index = worker_index()
    if index is None:
        return device
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return f"cuda:{index % gpus}" if gpus > 1 else device


def gpu_annotation(executor: Executor, device: str):
    """On a dask cluster whose workers advertise a GPU resource (`dask worker --resources GPU=1`), every task
    that may use CUDA asks for one GPU, so each worker runs one at a time and CPU-only workers get none."""
    import contextlib

    if not isinstance(executor, DaskExecutor) or device == "cpu":
        return contextlib.nullcontext()
    import dask
    from distributed import default_client

    workers = default_client().scheduler_info().get("workers", {}).values()
    if any("GPU" in (w.get("resources") or {}) for w in workers):
        return dask.annotate(resources={"GPU": 1})
    return contextlib.nullcontext()


def run_on_scheduler(scheduler: str, fn: Callable[[Any], Any], task: Any) -> Any:
    """Run one task on one worker of an existing scheduler and return its result; a task error comes back as
    the task's own exception (one line, no worker dump), an unreachable scheduler as a ConfigError."""
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--scheduler needs the `distributed` package (pip install distributed)") from None
    try:
        with Client(scheduler, timeout="30s") as client:
            install_quiet_dumps(client)
            return client.submit(fn, task, pure=False).result()
    except MerPipeError:
        raise
    except OSError as exc:
        raise ConfigError(f"--scheduler {scheduler}: cannot reach the dask scheduler ({exc}); start it with "
                          "`dask scheduler` or drop --scheduler") from None
