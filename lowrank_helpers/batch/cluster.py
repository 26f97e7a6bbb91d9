"""The batch on a Dask cluster: ``lowrank-study --scheduler tcp://host:8786`` (or ``local``).

Each job is one Dask task. A worker needs the package (``pip install 'lowrank_helpers[cluster]'``)
and finds or downloads the data itself; it needs no filesystem shared with the client. The
client sends the notebook, the job's parameters and the records its runs already have; the
worker runs the notebook in a temporary directory through :func:`~lowrank_helpers.batch.jobs.run_job`
and sends back, as events on the scheduler, each record as soon as it is written and the epoch
training has reached; at the end it returns the executed notebook. The client writes records
and notebooks atomically into its own results and runs directories, each record once.

Faults. A worker that dies mid-job: the scheduler runs the job again on another worker, up to
its ``distributed.scheduler.allowed-failures`` times (3 by default), then the client reports
the job failed by name. A retried job first takes the records its earlier tries sent, so what
finished is neither trained nor written again. Ctrl-C, or the client's death, cancels the
client's tasks; each job notices within a second and stops its notebook and kernel. A
``LocalCluster``'s workers die with the client that started them.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import traceback
import uuid
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from .jobs import Outcome, run_job, usable_cores
from .runners import JobSpec
from ..core.results import ResultsDirError, read_record, record_file, save_record, write_atomic

#: Seconds to wait for a scheduler before saying it does not answer.
CONNECT_TIMEOUT = 5


class ClusterError(RuntimeError):
    """The cluster cannot be used (Dask missing, scheduler unreachable, workers unfit)."""


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ClusterError("--scheduler needs Dask: pip install -e '.[cluster]' in the "
                           "repository (dask and distributed)") from exc
    return distributed


def connect(address: str, jobs: int, timeout: float = CONNECT_TIMEOUT):
    """A client of the scheduler at ``address``, or of a new ``LocalCluster`` of ``jobs``
    single-threaded worker processes for ``"local"``; returns ``(client, cluster or None)``."""
    distributed = _distributed()
    if address == "local":
        cluster = distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None,
                                           memory_limit=0)  # as the local runner: no limit
        return distributed.Client(cluster), cluster
    if "://" not in address:
        raise ClusterError(f"--scheduler {address!r} is not an address; give the scheduler's "
                           "as tcp://HOST:PORT (dask scheduler prints it), or local")
    url = urlparse(address)
    try:
        if url.scheme in ("tcp", "tls") and url.hostname and url.port:  # refused: at once
            socket.create_connection((url.hostname, url.port), timeout=timeout).close()
        return distributed.Client(address, timeout=timeout), None
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"no Dask scheduler answers at {address} ({exc}); start one with "
                           f"'dask scheduler' and workers with 'dask worker {address}', or use "
                           "--scheduler local") from exc


#: Seconds each step of the client's shutdown (cancel the jobs, close the client, close a
#: local cluster) may take before the command goes on without it: Ctrl-C always returns.
SHUTDOWN_TIMEOUT = 20


def _bounded(step: Callable[[], object], seconds: float = SHUTDOWN_TIMEOUT) -> None:
    """Run ``step`` in a daemon thread for at most ``seconds``; a step that hangs (a client's
    call after an interrupt, or a scheduler that does not answer) is left behind, and its error
    is ignored: shutting down must never keep the user waiting or hide the first error."""
    done = threading.Event()

    def call():
        try:
            step()
        except BaseException:  # noqa: BLE001 - shutting down; the first error is the user's
            pass
        finally:
            done.set()
    threading.Thread(target=call, daemon=True, name="lowrank-shutdown").start()
    if not done.wait(seconds):
        print(f"warning: the Dask client's shutdown took over {seconds:g} s; left behind",
              file=sys.stderr, flush=True)


def _package_version() -> str:
    import lowrank_helpers
    return lowrank_helpers.__version__


def check_workers(client) -> list[str]:
    """Every worker must import this package; returns warnings (a different version), raises
    ClusterError naming the workers that cannot."""
    from .. import __version__ as mine
    theirs = client.run(_package_version, on_error="return")
    missing = sorted(w for w, v in theirs.items() if isinstance(v, BaseException))
    if missing:
        raise ClusterError(f"worker(s) {', '.join(missing)} cannot import lowrank_helpers; "
                           "install it on every worker: pip install -e '.[cluster]' in a copy "
                           "of the repository")
    return [f"worker {w} has lowrank_helpers {v}, this client {mine}"
            for w, v in sorted(theirs.items()) if v != mine]


def _threads_here(client, worker) -> int:
    """This machine's cores shared among the Dask threads (task slots) on it."""
    host = urlparse(worker.address).hostname
    slots = sum(n for addr, n in client.nthreads().items() if urlparse(addr).hostname == host)
    return max(1, usable_cores() // max(1, slots))


def remote_job(name: str, notebook_name: str, notebook: bytes, params: dict, records: list,
               timeout: float | None, topic: str, prepare: Callable[[], None] | None) -> dict:
    """Run one job on a Dask worker (the task itself); see the module's docstring."""
    from distributed import Lock, get_client, get_worker
    worker, client = get_worker(), get_client()
    key = worker.get_current_task()

    def cancelled() -> bool:  # by Ctrl-C on the client, or because the client is gone
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state not in ("executing", "long-running")

    def send(kind: str, **msg) -> None:  # records on a topic of their own, per job, so
        # that progress never pushes them out of the scheduler's bounded event log
        worker.log_event(f"{topic}-records-{name}" if kind == "record" else topic,
                         {"kind": kind, "job": name, **msg})

    def record_written(path: Path) -> None:
        try:
            send("record", record=read_record(path))
        except ValueError as exc:  # not a record: the client is told, the job goes on
            send("warning", text=str(exc))

    earlier = [msg["record"] for _, msg in client.get_events(f"{topic}-records-{name}")]
    if prepare is not None:  # once per machine at a time: jobs must not race on a download
        with Lock(f"lowrank-prepare-{socket.gethostname()}"):
            prepare()
    threads = str(_threads_here(client, worker))
    with tempfile.TemporaryDirectory(prefix=f"lowrank-{name}-") as tmp:
        # named as the client's (".../smoke" stays "smoke"), so that the notebook reads and
        # writes its records right here
        results = Path(tmp) / "results" / Path(_results_dir(params)).name
        nb = Path(tmp) / "notebook" / notebook_name
        for record in (*records, *earlier):
            save_record(record, results)
        given = set(results.rglob("*.json"))
        nb.parent.mkdir()
        nb.write_bytes(notebook)
        outcome = run_job(
            nb, Path(tmp) / "executed" / notebook_name, _results_dir(params, str(results)),
            name=name, env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
            timeout=timeout, on_progress=lambda info: send("progress", **info), watch=results,
            on_record=record_written, stopped=cancelled)
        return {"status": outcome.status, "rc": outcome.rc, "output": outcome.output,
                "detail": outcome.detail, "worker": worker.address,
                "notebook": outcome.notebook.read_bytes() if outcome.notebook else None,
                "failed": outcome.notebook is not None and outcome.status != "done",
                "records": [r for r in map(_record_or_none, sorted(set(results.rglob("*.json"))
                                                                   - given)) if r]}


def _results_dir(params: dict, new: str | None = None):
    """The results folder of a job's parameters (a study notebook's own, or the ``config``
    of :data:`~lowrank_helpers.batch.presets.JOB_NOTEBOOK`'s); with ``new``: the parameters with it
    replaced."""
    nested = "config" in params and isinstance(params["config"], dict)
    own = params["config"] if nested else params
    if new is None:
        return own["results_dir"]
    own = {**own, "results_dir": new}
    return {**params, "config": own} if nested else own


def _record_or_none(path: Path) -> dict | None:
    try:
        return read_record(path)
    except ValueError:
        return None


class DaskRunner:
    """Jobs on a Dask cluster (see the module's docstring); the client writes what they
    return into ``results_dir`` and each job's runs directory."""

    def __init__(self, address: str, jobs: int = 1, timeout: float | None = None,
                 results_dir: str | os.PathLike = "results"):
        self.address, self.jobs, self.timeout = address, jobs, timeout
        self.results_dir = Path(results_dir)
        self.topic = f"lowrank-batch-{uuid.uuid4().hex[:12]}"
        self.lock = threading.Lock()
        self.written = 0
        self.expected: dict[str, set[str] | None] = {}  # job -> the run ids it may write
                                                         # (None: any, a search's job)
        self.refused: dict[str, set[str]] = {}    # job -> run ids it sent but was not given
        self.client = self.cluster = None
        self._prepare = None
        self._on_progress: Callable[[str, dict], None] = lambda name, info: None

    def __enter__(self):
        self.client, self.cluster = connect(self.address, self.jobs)
        try:
            for warning in check_workers(self.client):
                print(f"warning: {warning}", flush=True)
            self.client.subscribe_topic(self.topic, self._event)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            _bounded(lambda: self.client.close(timeout=SHUTDOWN_TIMEOUT))
        if self.cluster is not None:
            _bounded(lambda: self.cluster.close(timeout=SHUTDOWN_TIMEOUT))

    def describe(self) -> str:
        workers = self.client.nthreads()
        where = "a local Dask cluster" if self.cluster is not None else \
            f"the Dask cluster at {self.address}"
        note = "" if workers else " (no worker yet: jobs wait for 'dask worker ADDRESS')"
        return f"on {where}: {len(workers)} workers, {sum(workers.values())} jobs at a time{note}"

    def prepare(self, task_prepare: Callable[[], None]) -> None:
        self._prepare = task_prepare  # each worker's own data, prepared where it runs

    def take(self, job: str, record: dict) -> None:
        """Write ``record`` into the results directory unless it is already there, or is not
        one of the runs ``job`` was sent to do (a worker configured otherwise)."""
        with self.lock:
            expected = self.expected.get(job, ())
            if expected is not None and record.get("run_id") not in expected:
                refused = self.refused.setdefault(job, set())
                if record.get("run_id") not in refused:
                    refused.add(record.get("run_id"))
                    print(f"warning: job {job} sent back a record of a run it was not given "
                          f"({record.get('name')} {record.get('run_id')}); not written: check "
                          "the workers' LOWRANK_* environment", file=sys.stderr, flush=True)
                return
            if self._has(record):
                return
            try:
                save_record(record, self.results_dir)
            except ResultsDirError as exc:  # saved elsewhere, and said where
                print(f"error: {exc}", file=sys.stderr, flush=True)
                return
            self.written += 1

    def _has(self, record: dict) -> bool:
        """A valid record of this run is there already (a corrupt one is replaced)."""
        try:
            read_record(self.results_dir / record_file(record))
            return True
        except ValueError:
            return False

    def summary(self) -> str:
        return f"{self.written} records written into {self.results_dir}"

    def _event(self, event) -> None:
        _, msg = event
        if msg.get("kind") == "record":
            self.take(msg["job"], msg["record"])
        elif msg.get("kind") == "progress":
            self._on_progress(msg["job"], {"epoch": msg["epoch"], "epochs": msg["epochs"]})
        elif msg.get("kind") == "warning":
            print(f"warning: job {msg['job']}: {msg['text']}", file=sys.stderr, flush=True)

    def run(self, specs: list[JobSpec], on_progress: Callable[[str, dict], None]
            ) -> Iterator[Outcome]:
        distributed = _distributed()
        self._on_progress = on_progress
        futures = {}
        try:
            for spec in specs:
                name = spec.job.name
                self.expected[name] = spec.job.run_ids()
                self.client.subscribe_topic(f"{self.topic}-records-{name}", self._event)
                spec.out.parent.mkdir(parents=True, exist_ok=True)
                spec.out.with_suffix(".params.json").write_text(json.dumps(spec.params,
                                                                           indent=1))
                futures[self.client.submit(
                    remote_job, name, spec.notebook.name, spec.notebook.read_bytes(),
                    spec.params, spec.job.records(), self.timeout, self.topic, self._prepare,
                    key=f"lowrank-{name}-{uuid.uuid4().hex[:8]}", pure=False)] = spec
            for fut in distributed.as_completed(futures):
                yield self._outcome(futures[fut], fut)
        finally:  # bounded: an interrupted client must exit even if the scheduler is slow
            _bounded(lambda: self.client.cancel(list(futures)))

    def _outcome(self, spec: JobSpec, fut) -> Outcome:
        name = spec.job.name
        distributed = _distributed()
        try:
            res = fut.result()
        except distributed.KilledWorker as exc:
            return Outcome(name, "failed", 1, str(exc), None,
                           f"KilledWorker: {exc.allowed_failures + 1} tries, each ended by "
                           f"its worker's death (the last on {exc.last_worker.address})")
        except Exception as exc:  # the task itself broke (the data missing on a worker, ...)
            return Outcome(name, "failed", 1, "".join(traceback.format_exception(exc)),
                           None, f"{type(exc).__name__}: {exc}")
        for record in res["records"]:  # any whose event was lost
            self.take(name, record)
        executed = None
        if res["notebook"] is not None:
            executed = spec.out.with_name(spec.out.stem + ".failed.ipynb") if res["failed"] \
                else spec.out
            write_atomic(executed, res["notebook"])
        detail = res["detail"] or (f"exit {res['rc']} on {res['worker']}"
                                   if res["status"] != "done" else "")
        refused = len(self.refused.get(name, ()))
        if res["status"] == "done" and refused:  # the worker trained other runs than asked
            return Outcome(name, "failed", 1, res["output"], executed,
                           f"{refused} of the records it sent back are of runs it was not "
                           "given, and were not written")
        return Outcome(name, res["status"], res["rc"], res["output"], executed, detail)
