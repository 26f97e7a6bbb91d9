"""Records of earlier schemas, read as today's (schema 2), and rewritten as such on request.

Every study writes one record schema (:func:`~lowrank_helpers.core.results.make_record`). The
language-model study first wrote its own (``"lm-1"``: the step a run diverged at under
``diverged_iter``, its cost in tokens and seconds). :func:`upgrade` turns such a record into
a schema-2 one without retraining anything: the run id, name, config, history, final metrics
and analysis are kept as they are; the cost moves to schema 2's names (FLOPs per sample, here a
token; the optimizer state from its formula, AdamW's two moments, as schema 2 records it where
the trainer did not measure it; the wall time); what lm-1 never measured (peak memory) is null.

:func:`~lowrank_helpers.core.results.read_record` upgrades every record it reads, so an older
results folder keeps working; ``lowrank-study migrate DIR`` rewrites the files themselves
(:func:`migrate_dir`).
"""
from __future__ import annotations

from pathlib import Path

#: The schemas :func:`upgrade` reads.
LEGACY_SCHEMAS = ("lm-1",)


def upgrade(record: dict) -> dict:
    """``record`` in schema 2 (a schema-2 record, or anything else, is returned as it is)."""
    if not isinstance(record, dict) or record.get("schema") != "lm-1":
        return record
    from ..models.mlp import optimizer_state_bytes
    from .protocol import SCHEMA, RunConfig
    run = RunConfig.from_dict(record["config"])
    old = record.get("cost") or {}
    total = record["parameters"]["total"]
    out = {
        "schema": SCHEMA, "run_id": record["run_id"], "name": record["name"],
        "config": record["config"], "parameters": record["parameters"],
        "init_test_accuracy": None, "init_test_loss": None,
        "history": record["history"],
        "cost": {"parameters": total,
                 "training_flops_per_sample": old.get("training_flops_per_token"),
                 "optimizer_state_bytes": optimizer_state_bytes(run.optimizer, run.momentum,
                                                                total),
                 "peak_memory_bytes": None, "peak_memory_kind": None,
                 "seconds_per_epoch": None, "stack_size": old.get("stack_size"),
                 "engine": "stacked", "step_mode": "eager"},
        "diverged_epoch": None,
        "wall_time": old.get("seconds"),
        **{k: record.get(k) for k in ("device", "torch_threads", "versions", "git_commit",
                                      "finished_at")},
        "final": record.get("final") or {},
        "migrated_from": "lm-1",
    }
    if record.get("diverged_iter") is not None:
        out["diverged"] = record["diverged_iter"]
    if record.get("analysis"):
        out["analysis"] = record["analysis"]
    return out


def migrate_dir(results_dir) -> list[Path]:
    """Rewrite every record of a legacy schema under ``results_dir`` (not its subfolders) as
    schema 2, atomically, keeping its file name; returns the files rewritten. Nothing is
    retrained: a study run on the folder afterwards finds every run recorded."""
    import json
    from .results import _write_atomic
    done = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue   # not a record: load_records names it
        if isinstance(record, dict) and record.get("schema") in LEGACY_SCHEMAS:
            _write_atomic(upgrade(record), path)
            done.append(path)
    return done
