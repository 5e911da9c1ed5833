"""MQAR: an oracle reads the answers off the input; curriculum; validation messages."""

from __future__ import annotations

import pytest
import torch

from selmem.tasks import MQARTask, build_task


def oracle(task: MQARTask, row: list[int]) -> dict[int, int]:
    """{scored position: value} from the tokens alone: pairs of segment 0, queries at the end."""
    is_key = lambda t: 1 <= t <= task.num_keys  # noqa: E731
    memory, pos = {}, 0
    while pos < task.segment_len and is_key(row[pos]):
        memory[row[pos]] = row[pos + 1]
        pos += 2
    last = (task.num_segments - 1) * task.segment_len
    return {t: memory[row[t]] for t in range(last, task.seq_len) if is_key(row[t])}


@pytest.mark.parametrize("split", ["train", "test"])
def test_oracle_recovers_every_target(split):
    task = MQARTask(
        num_pairs=5, num_keys=8, num_values=6, segment_len=12, num_segments=4, noise_vocab=3
    )
    batch = task.batch(split, 2, 16)
    for b in range(16):
        answers = oracle(task, batch.tokens[b].tolist())
        assert sorted(answers) == batch.loss_mask[b].nonzero().flatten().tolist()
        assert all(batch.targets[b, t] == v for t, v in answers.items())


def test_layout_ids_and_pointers():
    task = MQARTask(
        num_pairs=4, num_keys=6, num_values=5, segment_len=10, num_segments=3, noise_vocab=2
    )
    K, V = task.num_keys, task.num_values
    batch = task.batch("train", 0, 32)
    toks = batch.tokens
    keys, values = toks[:, 0:8:2], toks[:, 1:8:2]
    assert ((1 <= keys) & (keys <= K)).all() and ((K < values) & (values <= K + V)).all()
    assert all(len(set(row.tolist())) == 4 for row in keys), "keys of an example are distinct"
    noise = torch.cat([toks[:, 8:20], toks[:, 28:]], dim=1)
    assert (noise > K + V).all() and (noise < task.vocab_size).all()
    queries = toks[:, 20:28:2]
    assert torch.equal(queries.sort(dim=1).values, keys.sort(dim=1).values), "each key queried once"
    assert torch.equal(toks[:, 21:28:2], batch.targets[:, 20:28:2]), "the value follows its query"
    assert batch.relevant[:, :8].all() and not batch.relevant[:, 8:].any()
    for b in range(32):
        for t in range(20, 28, 2):
            start, end = batch.source[b, t].tolist()
            assert (
                end == start + 2
                and toks[b, start] == toks[b, t]
                and toks[b, start + 1] == batch.targets[b, t]
            )


def test_queries_come_in_random_order():
    task = MQARTask(num_pairs=6, segment_len=12)
    batch = task.batch("train", 0, 8)
    start = (task.num_segments - 1) * task.segment_len
    in_order = [
        torch.equal(batch.tokens[b, start : start + 12 : 2], batch.tokens[b, 0:12:2])
        for b in range(8)
    ]
    assert not all(in_order)


def test_curriculum_grows_pairs_and_test_is_full():
    task = MQARTask(num_pairs=8, min_pairs=2, curriculum_steps=100)
    counts = [task.pairs_at("train", i) for i in (0, 10, 50, 99, 100, 5000)]
    assert counts[0] == 2 and counts[-2:] == [8, 8] and counts == sorted(counts)
    assert counts[2] == 2 + round(6 * 0.5)
    assert task.batch("train", 0, 4).loss_mask.sum(dim=1).tolist() == [2] * 4
    assert task.batch("train", 0, 4).relevant.sum(dim=1).tolist() == [4] * 4
    assert task.batch("test", 0, 4).loss_mask.sum(dim=1).tolist() == [8] * 4
    assert MQARTask(num_pairs=8).batch("train", 0, 4).loss_mask.sum(dim=1).tolist() == [8] * 4


@pytest.mark.parametrize(
    "field, params",
    [
        ("num_pairs", dict(num_pairs=17, segment_len=32)),  # 2*17 > 32
        ("num_pairs", dict(num_pairs=10, num_keys=8, segment_len=64)),  # more pairs than keys
        ("num_pairs", dict(num_pairs=0)),
        ("num_segments", dict(num_segments=1)),
        ("min_pairs", dict(curriculum_steps=10, min_pairs=0)),
        ("min_pairs", dict(curriculum_steps=10, min_pairs=9)),
        ("curriculum_steps", dict(curriculum_steps=-1)),
        ("noise_vocab", dict(noise_vocab=0)),
    ],
)
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("mqar", **params)


def test_min_pairs_is_free_without_curriculum():
    build_task("mqar", min_pairs=0)  # ignored when curriculum_steps == 0


def test_vocab_and_chance():
    task = MQARTask(num_keys=10, num_values=7, noise_vocab=3, segment_len=20, num_segments=5)
    assert task.vocab_size == 21 and task.seq_len == 100 and task.chance == pytest.approx(1 / 7)


def test_distance_curriculum_grows_segments_and_keeps_queries_last():
    task = MQARTask(num_pairs=4, segment_len=8, num_segments=4, min_pairs=2, min_segments=2,
                    curriculum_steps=100)
    lengths = [task.batch("train", i, 2).tokens.shape[1] for i in (0, 50, 100, 500)]
    assert lengths == [16, 24, 32, 32]  # 2 -> 3 -> 4 segments of 8
    assert task.batch("test", 0, 2).tokens.shape[1] == task.seq_len  # test is always full length
    early = task.batch("train", 0, 3)
    scored = early.loss_mask.nonzero()[:, 1]
    assert scored.min() >= 8  # queries sit in the (last) second segment
    assert torch.equal(early.targets[early.loss_mask], early.tokens[:, 1:][early.loss_mask[:, :-1]])


def test_min_segments_is_validated():
    with pytest.raises(ValueError, match="min_segments"):
        build_task("mqar", num_segments=3, min_segments=5, curriculum_steps=10)


# --- the hard layout: only context says what matters ----------------------------------------
HARD = dict(num_pairs=4, num_keys=16, num_values=16, segment_len=16, num_segments=4, noise_vocab=16,
            placement="random", noise="shared", marked=True, context_segments=2)


def hard_oracle(task: MQARTask, row: list[int]) -> tuple[dict[int, int], set[int]]:
    """({scored position: value}, relevant positions) from the tokens alone: a pair is the two
    tokens after a SET, a query the key after an ASK; nothing else is read."""
    memory, relevant, answers = {}, set(), {}
    for t in range(len(row) - 2):
        if row[t] == task.set_id:
            memory[row[t + 1]] = row[t + 2]
            relevant |= {t + 1, t + 2}
        elif row[t] == task.ask_id:
            answers[t + 1] = memory[row[t + 1]]
    return answers, relevant


@pytest.mark.parametrize("params", [HARD, dict(HARD, context_segments=1, num_pairs=3),
                                    dict(HARD, noise="disjoint"), dict(HARD, placement="fixed")],
                         ids=["hard", "one-context-segment", "disjoint-noise", "fixed-marked"])
def test_hard_oracle_recovers_targets_and_relevant(params):
    task = MQARTask(**params)
    batch = task.batch("test", 3, 16)
    for b in range(16):
        answers, relevant = hard_oracle(task, batch.tokens[b].tolist())
        assert sorted(answers) == batch.loss_mask[b].nonzero().flatten().tolist()
        assert all(batch.targets[b, t] == v for t, v in answers.items())
        assert relevant == set(batch.relevant[b].nonzero().flatten().tolist())
        for t in answers:  # the source span is the asked pair: key then value
            start, end = batch.source[b, t].tolist()
            assert end == start + 2 and batch.tokens[b, start] == batch.tokens[b, t]


def test_hard_noise_shares_every_id_and_pairs_move():
    task = MQARTask(**HARD)
    batch = task.batch("train", 0, 64)
    noise = batch.tokens[~batch.relevant & (batch.tokens < task.set_id)]
    assert set(noise.tolist()) == set(range(1, task.set_id)), "noise holds every key, value and noise id"
    first = batch.relevant.float().argmax(1)
    assert len(set(first.tolist())) > 4, "pairs sit at different positions in different rows"
    seg = task.segment_len
    assert batch.relevant[:, :seg].any(1).all() and batch.relevant[:, seg : 2 * seg].any(1).all(), \
        "pairs are spread over both context segments"
    assert not batch.relevant[:, 2 * seg :].any()


@pytest.mark.parametrize("rule", ["id-segment", "position"])
def test_hard_layout_defeats_context_free_rules(rule):
    from selmem.tasks.shortcuts import shortcut_f1

    assert shortcut_f1(MQARTask(**HARD), rule) <= 0.8
    cpu = dict(HARD, num_pairs=8, num_keys=32, num_values=32, segment_len=32)
    assert shortcut_f1(MQARTask(**cpu), rule) <= 0.8


def test_shipped_layout_is_caught_by_a_context_free_rule():
    from selmem.tasks.shortcuts import shortcut_f1

    assert shortcut_f1(MQARTask(num_pairs=4, num_keys=16, num_values=16, segment_len=16), "id-segment") == 1.0


def test_hard_layout_with_curriculum_keeps_a_query_segment():
    task = MQARTask(**dict(HARD, min_pairs=2, min_segments=2, curriculum_steps=100))
    early = task.batch("train", 0, 8)  # 2 segments: one context segment, then the queries
    assert early.tokens.shape[1] == 32 and early.loss_mask[:, 16:].sum(1).tolist() == [2] * 8
    answers, _ = hard_oracle(task, early.tokens[0].tolist())
    assert all(early.targets[0, t] == v for t, v in answers.items())


@pytest.mark.parametrize(
    "field, params",
    [
        ("noise", dict(noise="shared")),  # shared ids need the SET marker
        ("noise", dict(noise="loud", marked=True)),
        ("placement", dict(placement="anywhere")),
        ("context_segments", dict(context_segments=4, num_segments=4)),  # no segment left for queries
        ("num_pairs", dict(num_pairs=6, segment_len=16, marked=True)),  # 6 queries of 3 tokens > 16
    ],
)
def test_hard_layout_validation_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field}"):
        build_task("mqar", **params)
