"""The transformer teacher–student control: students trained on a low-rank teacher's
distributions (smoke sizes, CPU)."""
import json

import pytest
import torch
import torch.nn.functional as F

from lowrank_helpers.core.protocol import RunConfig
from lowrank_helpers.tasks import TASKS, task_of_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_the_loss_is_the_cross_entropy_to_the_teacher_kl_plus_its_entropy():
    task = TASKS["shakespeare_teacher8"]
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 5, 65, generator=g), torch.randn(2, 3, 5, 65, generator=g)
    lp_t = F.log_softmax(teacher, -1)
    kl = F.kl_div(F.log_softmax(student, -1), lp_t, log_target=True, reduction="sum") / 30
    entropy = -(lp_t.exp() * lp_t).sum() / 30
    torch.testing.assert_close(task.loss(student, lp_t), kl + entropy)
    torch.testing.assert_close(task.loss(teacher, lp_t), entropy)     # the floor: KL = 0


def test_a_students_id_and_config_name_its_teacher():
    a = RunConfig("shakespeare_teacher8", "lora", 8)
    b = RunConfig("shakespeare_teacher32", "lora", 8)
    lm = RunConfig("shakespeare_char", "lora", 8)
    assert len({a.run_id, b.run_id, lm.run_id}) == 3
    assert a.name.startswith("shakespeare_teacher8-both-r008")
    assert task_of_config(a.to_dict()).name == "shakespeare_teacher8"
    assert RunConfig.from_dict(a.to_dict()) == a and RunConfig.from_dict(lm.to_dict()) == lm
    # the teacher: the anchor of the student's protocol (the LM task, nanoGPT's lr, no slice)
    anchor = TASKS["shakespeare_teacher8"].anchor(a.replace(lr=3e-3, val_size=100_000))
    assert anchor.task == "shakespeare_char" and anchor.method == "full"
    assert (anchor.lr, anchor.min_lr, anchor.val_size, anchor.seed) == (1e-3, 1e-4, 0, 0)


def test_an_unregistered_teacher_rank_is_one_clear_error():
    from lowrank_helpers.studies.lm import LMStudyConfig
    with pytest.raises(ValueError, match="no teacher of rank 16 .* teacher ranks: 8, 32"):
        LMStudyConfig(teacher_ranks=(16,))
    LMStudyConfig(teacher_ranks=(16,), phases=("search",))     # asked for only by its phase


def test_the_teacher_phase_trains_students_below_at_and_above_k_with_resume(cache, tmp_path):
    from lowrank_helpers.core.results import load_records
    from lowrank_helpers.studies.lm import LMStudyConfig, run_lm_study
    from lowrank_helpers.tasks.text import read_corpus, split_text
    cfg = LMStudyConfig(smoke=True, phases=("teacher",), results_dir=str(tmp_path / "r"))
    run_lm_study(cfg, progress=False)
    where = tmp_path / "r" / "smoke" / "distill"
    runs = load_records(where)
    assert set(runs.task) == {"python_teacher2"}
    assert set(runs["rank"].dropna()) == {1, 2, 4} and "full" in set(runs.method)
    assert (runs.groupby("model_key").seed.nunique() == cfg.seeds).all()   # seeds at a choice
    assert runs.final_val_kl.notna().all() and (runs.final_val_kl > -1e-6).all()
    # the teacher scores KL 0 against itself; a student does not
    task = TASKS["python_teacher2"]
    run = RunConfig.from_dict(json.loads(next(where.glob("*-s0-*")).read_text())["config"])
    data = split_text(read_corpus(cfg.corpus, None), cfg.tune_chars, cfg.corpus)
    teacher = task.teacher(run)
    own = task.evaluate_many(lambda x: teacher(x)[None], run, data, final=True)[0]
    assert abs(own["val_kl"]) < 1e-6 and abs(own["tune_kl"]) < 1e-6
    # the report: every student of the teacher, its KL at the choice per seed, every rate
    from lowrank_helpers.reports.lm_gap import student_lines, student_table
    table = student_table(runs)
    assert list(table["rank"].fillna(0)) == [1, 2, 4, 0] and set(table.teacher_rank) == {2}
    for _, row in table.iterrows():
        seed0 = runs[(runs.label == row.label) & (runs.seed == 0)]
        assert row.every_rate == dict(zip(seed0.sort_values("lr").lr,
                                          seed0.sort_values("lr").final_val_kl))
        assert len(row.kl) == cfg.seeds
    assert "Holm over these 3" in "\n".join(student_lines(table))
    before = {p.name: p.stat().st_mtime_ns for p in where.glob("*.json")}
    run_lm_study(cfg, progress=False)                              # resumed: nothing retrained
    assert before == {p.name: p.stat().st_mtime_ns for p in where.glob("*.json")}


def test_no_student_starts_from_an_anchors_init():
    """The teacher is an anchor trained from seed s's init; a student of seed s must not
    start from that init (its embeddings are drawn first, from the same stream)."""
    student = RunConfig("shakespeare_teacher8", "full", seed=0)
    anchor = TASKS["shakespeare_teacher8"].anchor(student)
    a, s = anchor.build(), student.build()
    assert not torch.equal(a.wte.weight, s.wte.weight)
    assert torch.equal(s.wte.weight, student.build().wte.weight)     # still seeded


def test_the_students_answer_counts_only_students_that_can_express_their_teacher():
    import pandas as pd
    from lowrank_helpers.reports.lm_gap import student_lines
    row = lambda r, kl: {"teacher_rank": 4, "rank": r, "label": str(r), "lr": 1e-3,  # noqa: E731
                         "kl": kl, "loss": kl, "every_rate": {1e-3: kl[0]}}
    table = pd.DataFrame([row(2, [0.50, 0.51, 0.52]),      # below k: not counted
                          row(4, [0.30, 0.31, 0.32]),      # at k, far above dense
                          row(8, [0.101, 0.102, 0.100]),   # above k, as dense
                          row(None, [0.10, 0.102, 0.101])])
    so = student_lines(table)[-1]
    assert so.startswith("- **So** (students that can express their teacher exactly")
    assert "1 of 2 end detectably farther" in so and "(r=4 (k=4))" in so
    assert "1 not distinguishable" in so
