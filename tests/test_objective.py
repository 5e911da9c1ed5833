"""The training objective (selmem/objective.py, issue 27 item 1): computed from the model's outputs,
it is exactly what forward_sequence's teacher path and the training step give."""

from __future__ import annotations

import pytest
import torch

from selmem import SelectiveMemoryTransformer
from selmem.objective import WEIGHTS, Objective
from selmem.tasks import MQARTask
from tests.helpers import tiny_cfg

RECALL = MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=3, noise_vocab=2,
                  placement="random", noise="shared", marked=True)  # vocab 13 < tiny 16


@pytest.mark.parametrize("overrides", [{}, dict(credit="read"), dict(lambda_read=0.5, probe_target="peak"),
                                       dict(credit="none", gate_grad="task")],
                         ids=["probe", "read", "probe-read-teacher", "none"])
def test_teacher_from_outputs_equals_forward_sequences(overrides):
    """The objective applied to a plain forward_sequence's outputs gives, bit for bit, the losses
    of forward_sequence given the answers (which calls it)."""
    model = SelectiveMemoryTransformer(tiny_cfg(lambda_score=0.1, **overrides)).double().train()
    batch = RECALL.batch("train", 0, 4)
    want = model.forward_sequence(batch.tokens, 8, answer_mask=batch.loss_mask, answer_targets=batch.targets).losses
    out = model.forward_sequence(batch.tokens, 8)
    got = model.objective.teacher(out.losses, out.scores, out.stats, out.reads, model.probe, batch.tokens, 8,
                                  batch.loss_mask, batch.targets)
    assert set(got) == set(want)
    assert {"credit"} <= set(got) or overrides.get("credit") == "none"
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_weigh_is_the_weighted_sum_and_total_adds_aux():
    cfg = tiny_cfg(lambda_sparse=0.5, lambda_rec=0.25, lambda_nce=2.0, lambda_score=3.0)
    objective = Objective(cfg)
    parts = {k: torch.tensor(float(i + 1), dtype=torch.float64) for i, k in enumerate(WEIGHTS)}
    assert float(objective.weigh(parts)) == 0.5 * 1 + 0.25 * 2 + 2.0 * 3 + 3.0 * 4
    del parts["infonce"]  # a hosted stack has none: left out, not an error
    assert float(objective.weigh(parts)) == 0.5 * 1 + 0.25 * 2 + 3.0 * 4
    assert float(Objective.total(torch.tensor(1.0), {"aux": torch.tensor(2.0)})) == 3.0


def test_model_reads_its_objective_from_its_config():
    model = SelectiveMemoryTransformer(tiny_cfg())
    assert model.objective.has_teacher
    model.cfg = tiny_cfg(credit="none")
    assert not model.objective.has_teacher
