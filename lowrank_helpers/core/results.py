"""Run records: one JSON file per run, written atomically, loaded into pandas; and the keys
that say which records are replicates of one another."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import uuid
import warnings
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch

from ..methods import model_order
from ..models.mlp import optimizer_state_bytes
from .protocol import PROTOCOL_FIELDS, REFERENCE, SCHEMA, RunConfig
from .settings import settings_of
from ..tasks import TASKS

REQUIRED = ("run_id", "config", "history", "parameters")
#: Cost columns that load_records takes from each record's "cost" (None in older records).
COST_COLUMNS = ("training_flops_per_sample", "optimizer_state_bytes", "peak_memory_bytes",
                "peak_memory_kind", "seconds_per_epoch", "stack_size", "engine", "step_mode")


class ResultsDirError(OSError):
    """The results directory cannot be created or written."""


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, "+dirty" if modified; None if unknown."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _finite_or_none(obj):
    """JSON has no NaN/inf: store them as null (pandas reads null back as NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def cost(run: RunConfig, result, parameters: int) -> dict:
    """What a run cost: parameters, FLOPs (per sample of the task: an image, a token),
    optimizer state (measured from the state tensors where the trainer measured it, else from
    the formula), memory and time (see README)."""
    seconds = [h["seconds"] for h in result.history]
    measured = getattr(result, "optimizer_state_bytes", None)
    return {
        "parameters": parameters,
        "training_flops_per_sample": TASKS[run.task].training_flops(run),
        "optimizer_state_bytes": measured if measured is not None else
        optimizer_state_bytes(run.optimizer, run.momentum, parameters),
        "peak_memory_bytes": result.peak_memory.get("bytes"),
        "peak_memory_kind": result.peak_memory.get("kind"),
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "stack_size": result.stack_size,  # models trained in lockstep, sharing those seconds
        "engine": result.engine,
        "step_mode": getattr(result, "step_mode", "eager"),
    }


def make_record(run: RunConfig, result, parameters: dict[str, int] | None = None) -> dict:
    """The record of a finished run: config, metrics, parameter counts, cost and provenance
    (and the trained model's analysis, where one was asked for).

    ``parameters`` defaults to the task's count of the run's model's parameters.
    """
    from .. import __version__
    parameters = parameters or TASKS[run.task].parameters(run)
    extra = {"analysis": result.analysis} if getattr(result, "analysis", None) else {}
    init = dict(getattr(result, "init", None) or {})
    if getattr(result, "final", None):
        extra["final"] = result.final        # read on every sample of the splits
    if getattr(result, "diverged", None) is not None:
        extra["diverged"] = result.diverged  # the step
    return _finite_or_none({
        "schema": SCHEMA,
        "run_id": run.run_id,
        "name": run.name,
        "config": run.to_dict(),
        "parameters": parameters,
        "init_test_accuracy": init.get("test_accuracy", result.init_test_accuracy),
        "init_test_loss": init.get("test_loss", result.init_test_loss),
        **({"init": init} if init and "test_accuracy" not in init else {}),
        "history": result.history,
        "cost": cost(run, result, parameters["total"]),
        "diverged_epoch": result.diverged_epoch,
        "wall_time": result.wall_time,
        "device": result.device,
        "torch_threads": torch.get_num_threads(),
        "versions": {"lowrank_helpers": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "git_commit": git_commit(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    })


def record_path(run: RunConfig, results_dir) -> Path:
    return Path(results_dir) / f"{run.name}-{run.run_id}.json"


def record_file(record: dict) -> str:
    """The file name of ``record`` (as :func:`record_path` names its run's)."""
    return f"{record['name']}-{record['run_id']}.json"


def check_writable(results_dir, what: str = "results directory",
                   choose: str = "results_dir / --results-dir") -> Path:
    """Create ``results_dir`` if needed and check that a file can be written there."""
    path = Path(results_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, suffix=".tmp"):
            pass
    except OSError as exc:
        raise ResultsDirError(f"{what} {str(path)!r} cannot be written ({exc}); choose another "
                              f"with {choose}") from exc
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader sees the old
    file or the whole new one. The file gets the usual permissions (the umask's)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_atomic(record: dict, path: Path) -> None:
    write_atomic(path, json.dumps(record, indent=1, ensure_ascii=False).encode())


def save_record(record: dict, results_dir) -> Path:
    """Write ``record`` atomically (temporary file, then rename) into ``results_dir``.

    If that fails, the record is written to the system's temporary directory instead, so the
    computed run is not lost, and ResultsDirError names both places.
    """
    path = Path(results_dir) / record_file(record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(record, path)
    except OSError as exc:
        rescue = Path(tempfile.gettempdir()) / "lowrank_helpers-unsaved" / path.name
        try:
            rescue.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(record, rescue)
        except OSError as exc2:
            raise ResultsDirError(f"could not write {path} ({exc}) nor {rescue} ({exc2})") from exc
        raise ResultsDirError(f"could not write {path} ({exc}); the record was saved to "
                              f"{rescue} instead: move it into your results directory") from exc
    return path


def read_record(path) -> dict:
    """Load one record, in today's schema (an earlier one is upgraded,
    :func:`~lowrank_helpers.core.migrate.upgrade`); raise ValueError if it is not a valid record."""
    from .migrate import upgrade
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable record {path}: {exc}") from exc
    try:
        record = upgrade(record)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"record {path} of schema {record.get('schema')!r} cannot be "
                         f"read: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
    if missing:
        raise ValueError(f"record {path} lacks {', '.join(missing)}")
    return record


def has_record(run: RunConfig, results_dir) -> bool:
    """True if a valid record of exactly this run exists (a corrupt one is warned about)."""
    path = record_path(run, results_dir)
    if not path.exists():
        return False
    try:
        read_record(path)
        return True
    except ValueError as exc:
        warnings.warn(f"{exc}; the run will be redone", stacklevel=2)
        return False


def _row(record: dict, path: Path) -> dict:
    run = RunConfig.from_dict(record["config"])
    if run.run_id != record["run_id"]:
        warnings.warn(f"record {path}: its run_id {record['run_id']} is not the id of its config "
                      f"({run.run_id}); it is listed under the latter", stacklevel=3)
    hist = record["history"]
    last = hist[-1] if hist else {}
    task = TASKS[run.task]
    finals = {f"final_{k}": v for k, v in {**last, **(record.get("final") or {})}.items()
              if k not in ("epoch", "iter", "seconds", "lr") and isinstance(v, (int, float))}
    return {"task": run.task, "method": run.method, "rank": run.rank, "init": run.init,
            "rescale": run.rescale, "targets": run.targets, "seed": run.seed,
            "options": dict(run.options or {}),   # every row has the column (none: {})
            "widths": task.shape_label(run.shape),  # hashable, one cell
            **{f.name: getattr(run.protocol, f.name) for f in settings_of(type(run.protocol))},
            **finals,
            "model": run.label, "run_id": run.run_id, "group_id": run.group_id,
            "model_key": run.model_key,
            "protocol_id": run.protocol_id, "protocol": run.protocol.describe(),
            "name": record.get("name"), "params": record["parameters"].get("total"),
            "init_test_accuracy": record.get("init_test_accuracy"),
            "init_test_loss": record.get("init_test_loss"),
            "epoch1_test_accuracy": hist[0].get("test_accuracy") if hist else None,
            "final_test_accuracy": last.get("test_accuracy"),
            "final_test_loss": last.get("test_loss"),
            "final_train_loss": last.get("train_loss"),
            "final_val_accuracy": last.get("val_accuracy"),
            "score": finals.get(f"final_{task.score}"),
            "epochs_done": len(hist), "diverged_epoch": record.get("diverged_epoch"),
            "diverged_step": record.get("diverged"),
            "wall_time": record.get("wall_time"), "device": record.get("device"),
            "torch_threads": record.get("torch_threads"),
            **{k: record.get("cost", {}).get(k) for k in COST_COLUMNS},
            "torch": record.get("versions", {}).get("torch"),
            "git_commit": record.get("git_commit"), "history": hist,
            "analysis": record.get("analysis"), "path": str(path),
            **task.record_columns(record, run)}


def load_records(results_dir, **where) -> pd.DataFrame:
    """All records under ``results_dir`` (a directory, or a list of them) as a DataFrame, one
    row per record: the run's task, model, seed and protocol (one column per field), its
    keys (``run_id``; ``group_id``, shared by replicates; ``protocol_id``, shared by runs
    trained alike) and its outcome.

    Corrupt files are named in a warning and skipped. Keyword filters keep rows whose column
    equals the value, or is in it when a list/tuple/set is given: ``load_records(d, rank=[4, 8])``.
    """
    dirs = [results_dir] if isinstance(results_dir, (str, os.PathLike)) else list(results_dir)
    rows = []
    for path in sorted(p for d in dirs for p in Path(d).glob("*.json")):
        try:
            record = read_record(path)
            rows.append(_row(record, path))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.warn(f"skipping corrupt record {path}: {exc}", stacklevel=2)
    df = pd.DataFrame(rows)
    for col, value in where.items():
        if df.empty:
            break
        if col not in df:
            raise ValueError(f"unknown column {col!r}; columns: {', '.join(df.columns)}")
        values = value if isinstance(value, (list, tuple, set)) else [value]
        df = df[df[col].isin(values)]
    if not df.empty:
        df["rank"] = df["rank"].astype("Int64")  # full-rank runs have no rank
    return df.reset_index(drop=True)


#: The columns that say how a run was trained and evaluated (beside the model and the seed).
PROTOCOL_COLUMNS = ("task", "widths", *PROTOCOL_FIELDS)


def replicates(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with every run counted once (the same run id in two places is one run), in
    the registry's order of models; tables and figures group these by ``group_id``, so only
    the seed ever replicates."""
    if runs.empty:
        return runs
    runs = runs.drop_duplicates("run_id")
    order = [model_order(m, r if pd.notna(r) else None, i)
             for m, r, i in zip(runs.method, runs["rank"], runs.init)]
    return runs.assign(_order=order).sort_values(["_order", "protocol_id", "seed"],
                                                 kind="stable").drop(columns="_order")


def differing_fields(runs: pd.DataFrame) -> list[str]:
    """The protocol columns (task, widths and the protocol's fields) whose values differ
    between the protocols present in ``runs``."""
    per = runs.drop_duplicates("protocol_id")
    return [c for c in PROTOCOL_COLUMNS if c in per and per[c].map(_fmt_value).nunique() > 1]


def protocol_labels(runs: pd.DataFrame) -> pd.Series:
    """Per row, the fields that tell its protocol from the others in ``runs``
    (``"epochs=1"``), or "" where all rows share one protocol."""
    fields = differing_fields(runs)
    return pd.Series([", ".join(f"{c}={_fmt_value(row[c])}" for c in fields)
                      for _, row in runs.iterrows()], index=runs.index, dtype=object)


def _fmt_value(v) -> str:
    """A protocol field's value in a label; a missing one (a subset of None) is "None"."""
    if v is None or (isinstance(v, float) and v != v):
        return "None"
    return f"{v:g}" if isinstance(v, float) else str(v)


def one_protocol(runs: pd.DataFrame, what: str) -> pd.DataFrame:
    """``runs`` if they share one protocol; else ValueError naming the fields that differ."""
    fields = differing_fields(runs)
    if fields:
        raise ValueError(f"{what} compares models trained alike, but these records differ in "
                         f"{', '.join(fields)}; select one protocol first (e.g. "
                         f"load_records(dir, {fields[0]}=...))")
    return runs


def is_reference(runs):
    """Per row of a frame (or for one row): trained under the original study's protocol on its
    task and widths."""
    return runs["protocol_id"] == REFERENCE.protocol_id


def epochs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Long form of ``load_records``: one row per run and epoch, with the run's columns (but
    its history, analysis and path)."""
    keep = [c for c in runs.columns if c not in ("history", "analysis", "path")]
    parts = [pd.DataFrame(row.history).assign(**{c: row[c] for c in keep})
             for _, row in runs.iterrows() if row.history]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
