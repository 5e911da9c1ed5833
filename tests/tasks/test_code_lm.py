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
    task = CodeLMTask(seq_len=96)
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


def test_train_sampling_prefers_long_files():
    task = CodeLMTask(seq_len=32)
    batch = task.batch("train", 0, 64)
    assert len({bytes(r.tolist()[:8]) for r in batch.tokens}) > 50, "crops come from many places"


@pytest.mark.parametrize(
    "field, params", [("seq_len", dict(seq_len=0)), ("max_bytes", dict(max_bytes=0))]
)
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("code-lm", **params)
