"""One learning-rate search and one seed rule for every study: the choice by the task's
selection metrics, the grid grown at an edge, seeds, and a choice that moves where a seed fails."""
import math

import pandas as pd

import lowrank_helpers as lh
from lowrank_helpers.studies.search import choose, search, search_and_seed


def _row(run, loss, diverged=None):
    """A load_records row of a character-LM run (what the search reads)."""
    return {"task": run.task, "seed": run.seed, "lr": run.lr, "model_key": run.model_key,
            "run_id": run.run_id, "final_tune_loss": loss, "final_train_loss": loss,
            "diverged_epoch": None, "diverged_step": diverged}


class Study:
    """A study of synthetic runs: ``loss(lr, seed)`` is what training would give (None:
    diverged); records are kept in memory, and recorded runs are not trained again."""

    def __init__(self, loss):
        self.loss, self.rows, self.trained = loss, {}, []

    def train(self, runs, what):
        todo = [r for r in runs if r.run_id not in self.rows]
        for r in todo:
            value = self.loss(r.lr, r.seed)
            self.rows[r.run_id] = _row(r, value if value is not None else math.nan,
                                       None if value is not None else 7)
        self.trained += todo
        return len(todo)

    def records(self):
        return pd.DataFrame(list(self.rows.values()))


MODEL = lh.LMRun("tinyshakespeare", lh.LMShape(), "both", rank=16, init="lora")
GRID = (1e-3, 3e-3, 1e-2)


def test_the_lm_choice_is_the_lowest_tuning_loss_and_a_rate_where_a_seed_fails_is_out():
    runs = [MODEL.replace(lr=lr, min_lr=lr / 10) for lr in GRID]
    rows = pd.DataFrame([_row(r, x) for r, x in zip(runs, (2.0, 1.9, 1.5))]
                        + [_row(runs[2].replace(seed=1), math.nan, 750)])
    c = choose(rows)
    assert c.lr == 3e-3 and c.unstable == (1e-2,) and c.edge is None and c.score == 1.9
    assert choose(rows.iloc[:3]).lr == 1e-2 and choose(rows.iloc[:3]).edge == "high"


def test_a_choice_at_an_edge_grows_the_grid_up_to_max_extend():
    study = Study(lambda lr, seed: -math.log10(lr))     # the higher the rate, the better
    picked = search([MODEL], {MODEL.model_key: GRID}, study.train, study.records, max_extend=1)
    c = picked[MODEL.model_key]
    assert c.tried == (1e-3, 3e-3, 1e-2, 3e-2) and c.lr == 3e-2 and c.edge == "high"
    assert all(r.min_lr == r.lr / 10 for r in study.trained)   # the task's rate rule
    down = Study(lambda lr, seed: math.log10(lr))
    c = search([MODEL], {MODEL.model_key: GRID}, down.train, down.records, 2)[MODEL.model_key]
    assert c.tried[:2] == (1e-4, 3e-4) and c.lr == 1e-4      # two rungs below, no more
    inside = Study(lambda lr, seed: abs(math.log10(lr) + 2.5))
    c = search([MODEL], {MODEL.model_key: GRID}, inside.train, inside.records, 3)[MODEL.model_key]
    assert c.tried == GRID and c.lr == 3e-3 and len(inside.trained) == 3


def test_seeds_follow_the_choice_and_move_where_a_seed_fails_there():
    # best at 1e-2, but seed 2 diverges there: the choice moves to 3e-3, which gets its seeds
    study = Study(lambda lr, seed: None if (lr == 1e-2 and seed == 2) else -math.log10(lr)
                  if lr <= 1e-2 else 5.0)
    picked = search_and_seed([MODEL], {MODEL.model_key: GRID}, study.train, study.records,
                             max_extend=1, seeds=range(1, 3))
    assert picked[MODEL.model_key].lr == 3e-3 and picked[MODEL.model_key].unstable == (1e-2,)
    seeds = sorted((r.lr, r.seed) for r in study.trained if r.seed > 0)
    assert seeds == [(3e-3, 1), (3e-3, 2), (1e-2, 1), (1e-2, 2)]
    n = len(study.trained)        # resumed: a second call trains nothing
    search_and_seed([MODEL], {MODEL.model_key: GRID}, study.train, study.records, 1, range(1, 3))
    assert len(study.trained) == n


def test_refinement_adds_midpoints_until_the_choices_neighbours_are_within_the_factor():
    # the best rate is 4.2e-3, between the ladder's 3e-3 and 1e-2
    best = math.log10(4.2e-3)
    study = Study(lambda lr, seed: abs(math.log10(lr) - best))
    key = MODEL.model_key
    c = search([MODEL], {key: GRID}, study.train, study.records, max_extend=1,
               refine={key: 1.5})[key]
    assert set(GRID) <= set(c.tried) and c.edge is None
    i = c.tried.index(c.lr)
    assert c.tried[i + 1] / c.lr <= 1.5 and c.lr / c.tried[i - 1] <= 1.5
    assert abs(math.log10(c.lr) - best) < math.log10(1.5) / 2 + 1e-9  # within half a rung
    assert 5.5e-3 in c.tried and 1.7e-3 in c.tried            # the first midpoints, rounded
    # no refinement where it is not asked, and a resumed search trains nothing
    plain = Study(study.loss)
    assert search([MODEL], {key: GRID}, plain.train, plain.records, 1)[key].tried == GRID
    n = len(study.trained)
    search([MODEL], {key: GRID}, study.train, study.records, 1, refine={key: 1.5})
    assert len(study.trained) == n


def test_refinement_at_an_edge_the_grid_may_no_longer_grow_refines_towards_its_neighbour():
    study = Study(lambda lr, seed: -math.log10(lr))              # the higher, the better
    key = MODEL.model_key
    c = search([MODEL], {key: GRID}, study.train, study.records, max_extend=0,
               refine={key: 1.5})[key]
    assert c.lr == 1e-2 and c.edge == "high" and max(c.tried) == 1e-2
    assert c.lr / c.tried[-2] <= 1.5
