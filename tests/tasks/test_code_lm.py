"""Byte-level stdlib LM: rows are real file bytes, targets the next byte, split by file."""

from __future__ import annotations

import numpy as np
import pytest

from selmem.tasks import CodeLMTask, build_task
from selmem.tasks.code_lm import load_corpus
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
