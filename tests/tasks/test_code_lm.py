"""Byte-level stdlib LM: rows are real file bytes, targets the next byte, split by file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selmem.tasks import CodeLMTask, build_task
from selmem.tasks.code_lm import first_repeats, load_corpus
from selmem.tasks.stdlib import is_test_path


def test_train_and_test_files_are_disjoint_and_split_by_path():
    train, test = load_corpus("train", 8_000_000), load_corpus("test", 8_000_000)
    assert set(train.paths).isdisjoint(test.paths) and len(test.paths) > 5
    assert all(is_test_path(p) for p in test.paths) and not any(
        is_test_path(p) for p in train.paths
    )
    assert all(
        p.endswith(".py") and not p.startswith(("test/", "idlelib/"))
        for p in train.paths + test.paths
    )


@pytest.mark.parametrize("split", ["train", "test"])
def test_rows_are_file_bytes_and_targets_the_next_byte(split):
    task = CodeLMTask(seq_len=96, packed=False)  # crops of one file (test rows always are)
    corpus = load_corpus(split, task.max_bytes)
    batch = task.batch(split, 3, 8)
    tok, tgt, mask = batch.tokens.numpy(), batch.targets.numpy(), batch.loss_mask.numpy()
    assert batch.relevant is None and batch.source is None and task.chance is None
    for b in range(8):
        n = int(mask[b].sum())
        assert mask[b, :n].all() and not mask[b, n:].any(), "only a file's end is unscored"
        assert (tok[b, 1:n] == tgt[b, : n - 1]).all(), "targets are the next token"
        text = np.concatenate([tok[b, :1], tgt[b, :n]]).astype(np.uint8).tobytes()
        assert any(
            text in corpus.data[s:e].tobytes()
            for s, e in zip(corpus.starts, corpus.ends, strict=True)
        )
        assert (tok[b, n + 1 :] == 0).all(), "PAD after the end of a file"


def test_test_batches_enumerate_the_held_out_files():
    task = CodeLMTask(seq_len=64)
    corpus = load_corpus("test", task.max_bytes)
    first = corpus.data[corpus.starts[0] : corpus.ends[0]].tobytes()
    chunks = -(-len(first) // 64)
    batches = task.test_set(-(-chunks // 4), 4)
    for i in range(chunks):  # chunk i of the first test file is row i % 4 of test batch i // 4
        batch, b = batches[i // 4], i % 4
        n = int(batch.loss_mask[b].sum())
        window = bytes([int(batch.tokens[b, 0])] + batch.targets[b, :n].tolist())
        assert window == first[i * 64 : i * 64 + 65]
    assert task.num_test_chunks() >= chunks


def test_packed_rows_are_corpus_windows_with_resets_at_file_starts():
    task = CodeLMTask(seq_len=256)
    corpus = load_corpus("train", task.max_bytes)
    batch = next(b for b in (task.batch("train", i, 16) for i in range(100)) if b.reset[:, 1:].any())
    tok, tgt, mask, reset = (batch.tokens.numpy(), batch.targets.numpy(), batch.loss_mask.numpy(),
                             batch.reset.numpy())
    starts = set(corpus.starts.tolist())
    for b in range(16):  # find the window in the corpus by its bytes, where the row says it starts
        text = np.concatenate([tok[b], tgt[b, -1:]]).astype(np.uint8)
        o = corpus.data.tobytes().find(text[:256].tobytes())
        assert o >= 0 and (corpus.data[o : o + 256] == text[:256]).all()
        assert [t in starts for t in range(o, o + 256)] == reset[b].tolist()
        assert (mask[b, :-1] == ~reset[b, 1:]).all(), "the byte before a file start is not scored"
        assert (tgt[b][mask[b]] == corpus.data[o + 1 : o + 257][mask[b]]).all(), "targets are the next byte"


def test_train_sampling_prefers_long_files():
    task = CodeLMTask(seq_len=32, packed=False)
    batch = task.batch("train", 0, 64)
    assert len({bytes(r.tolist()[:8]) for r in batch.tokens}) > 50, "crops come from many places"


@pytest.mark.parametrize(
    "field, params", [("seq_len", dict(seq_len=0)), ("max_bytes", dict(max_bytes=0))]
)
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("code-lm", **params)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 3), min_size=2, max_size=24), min_size=1, max_size=3),
       st.integers(1, 4), st.data())
def test_first_repeats_points_at_the_earliest_same_ngram_of_the_same_document(rows_, n, data):
    """first_repeats against a brute-force search: target t (byte t + 1) gets the smallest u < t
    whose n bytes ending at u + 1 equal t's, both n-grams inside one document; -1 otherwise."""
    L = max(len(r) for r in rows_)
    rows = np.array([r + [0] * (L - len(r)) for r in rows_], dtype=np.int64)
    doc = np.array([np.cumsum(data.draw(st.lists(st.booleans(), min_size=L, max_size=L))) for _ in rows_])
    doc[rows == 0] = -1  # past a row's end: no document
    got = first_repeats(rows, doc, n)

    def gram(b, t):  # the n-gram ending at byte t + 1, or None where it leaves a document
        lo, hi = t + 2 - n, t + 2
        if lo < 0 or doc[b, lo] < 0 or len(set(doc[b, lo:hi])) != 1:
            return None
        return tuple(rows[b, lo:hi]), doc[b, lo]

    for b in range(len(rows)):
        for t in range(L - 1):
            g = gram(b, t)
            want = -1 if g is None else next((u for u in range(t) if gram(b, u) == g), -1)
            assert got[b, t] == want, (b, t)


def test_code_batches_mark_repeated_ngrams_and_only_inside_a_file():
    task = CodeLMTask(seq_len=512, max_bytes=2_000_000)
    for split in ("train", "test"):
        b = task.batch(split, 0, 4)
        rep = b.repeat_of
        assert rep.shape == b.tokens.shape and bool((rep[~b.loss_mask] == -1).all())
        rows, cols = (rep >= 0).nonzero(as_tuple=True)
        assert len(rows) > 0  # source code repeats itself
        full = torch.cat([b.tokens, b.targets[:, -1:]], dim=1)  # the row's bytes, t + 1 = target t
        for r, t in zip(rows[:50].tolist(), cols[:50].tolist(), strict=True):
            u = int(rep[r, t])
            assert u < t and torch.equal(full[r, t - 6 : t + 2], full[r, u - 6 : u + 2])
    assert CodeLMTask(seq_len=64, max_bytes=2_000_000, recall_ngram=0).batch("train", 0, 2).repeat_of is None


def test_distant_recall_is_what_the_last_two_segments_cannot_copy():
    """Segments of 4: at t = 9 (segment 2) the window is input positions 4..9, so a repeat whose
    first occurrence ends at input position 3 (u = 2) is distant, one ending at 4 (u = 3) is not;
    in segment 1 nothing is (its window starts at 0)."""
    from selmem.tasks.base import Batch
    from selmem.train.loop import distant_recall

    N = 12
    rep = torch.full((1, N), -1)
    rep[0, 9], rep[0, 10], rep[0, 7] = 2, 3, 0
    mask = torch.ones(1, N, dtype=torch.bool)
    batch = Batch(torch.zeros(1, N, dtype=torch.long), torch.zeros(1, N, dtype=torch.long), mask, repeat_of=rep)
    want = torch.zeros(1, N, dtype=torch.bool)
    want[0, 9] = True
    assert torch.equal(distant_recall(batch, 4), want)
