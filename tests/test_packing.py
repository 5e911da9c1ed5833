"""Packed and padded batches (packing.py): a packed row equals each of its documents run alone,
a padded batch equals its unpadded rows (fla's varlen == padded tests; float64)."""

from __future__ import annotations

import pytest
import torch

from selmem.packing import row_segments, starts_from_doc_ids
from tests.helpers import assert_close, tiny_model, tokens

VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param(dict(select="topk", compress="maxpool", read_bias="usage"), id="topk-maxpool"),
    pytest.param(dict(address="fifo", meta_cache=True), id="fifo-meta"),
]
DOCS = [[5, 19, 12], [30, 6]]  # document lengths per row; rows are right-padded to 36


def packed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[torch.Tensor]]]:
    docs = [[tokens(1, n)[0] for n in row] for row in DOCS]
    N = max(sum(row) for row in DOCS)
    x = torch.zeros(len(DOCS), N, dtype=torch.long)
    ids = torch.full((len(DOCS), N), -1)
    valid = torch.zeros(len(DOCS), N, dtype=torch.bool)
    for b, row in enumerate(docs):
        at = 0
        for d, doc in enumerate(row):
            x[b, at : at + len(doc)], ids[b, at : at + len(doc)], valid[b, at : at + len(doc)] = doc, d, True
            at += len(doc)
    return x, ids, valid, docs


@pytest.mark.parametrize("overrides", VARIANTS)
def test_packed_rows_equal_each_document_alone(overrides):
    model = tiny_model(**overrides).eval()
    x, ids, valid, docs = packed_batch()
    out = model.forward_sequence(x, segment_len=8, attention_mask=valid, doc_ids=ids)
    for b, row in enumerate(docs):
        at = 0
        for d, doc in enumerate(row):
            alone = model.forward_sequence(doc[None], segment_len=8)
            assert_close(f"row {b} doc {d}", alone.logits[0], out.logits[b, at : at + len(doc)], atol=1e-12)
            at += len(doc)
        for name in ("slots", "usage", "age"):  # the row ends with its last document's memory
            assert_close(name, getattr(alone.state, name)[:, 0], getattr(out.state, name)[:, b], atol=1e-12)
        assert int(out.state.position[b]) == len(row[-1])


def test_without_resets_documents_leak():
    """The control: the same packed row streamed without resets reads the earlier document."""
    model = tiny_model().eval()
    x, ids, valid, docs = packed_batch()
    leaky = model.forward_sequence(x[:1, :24], segment_len=8).logits[0, 5:24]
    alone = model.forward_sequence(docs[0][1][None], segment_len=8).logits[0]
    assert not torch.allclose(leaky, alone, atol=1e-6)


def test_reset_and_doc_ids_agree():
    model = tiny_model().eval()
    x, ids, valid, _ = packed_batch()
    a = model.forward_sequence(x, 8, attention_mask=valid, doc_ids=ids).logits
    b = model.forward_sequence(x, 8, attention_mask=valid, reset=starts_from_doc_ids(ids)).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("side", ["right", "left", "middle"])
@pytest.mark.parametrize("overrides", VARIANTS[:2])
def test_padded_batch_equals_unpadded_rows(overrides, side):
    model = tiny_model(**overrides).eval()
    rows = [tokens(1, 23)[0], tokens(1, 13)[0]]
    x = torch.zeros(2, 23, dtype=torch.long)
    valid = torch.zeros(2, 23, dtype=torch.bool)
    for b, r in enumerate(rows):
        at = {"right": 0, "left": 23 - len(r)}.get(side, 0)
        keep = torch.arange(at, at + len(r))
        if side == "middle" and len(r) < 23:  # padding inside the row: a gap after its 3rd token
            keep = torch.cat([keep[:3], keep[3:] + 23 - len(r)])
        x[b, keep], valid[b, keep] = r, True
    out = model.forward_sequence(x, segment_len=8, attention_mask=valid)
    for b, r in enumerate(rows):
        alone = model.forward_sequence(r[None], segment_len=8)
        assert_close(f"row {b}", alone.logits[0], out.logits[b][valid[b]], atol=1e-12)
        assert_close(f"row {b} slots", alone.state.slots[:, 0], out.state.slots[:, b], atol=1e-12)
        assert int(out.state.position[b]) == len(r)


def test_row_segments_worked_example():
    """packing.py's docstring: T = 4, 'a a a | b b b b b'."""
    valid = [True] * 8
    starts = [False, False, False, True, False, False, False, False]
    assert row_segments(valid, starts, 4) == [([0, 1, 2], False), ([3, 4, 5, 6], True), ([7], False)]
    # a start flag on padding carries to the next real token
    assert row_segments([True, False, True], [False, True, False], 4) == [([0], False), ([2], True)]


def test_forward_mask_must_be_right_padding():
    model = tiny_model()
    with pytest.raises(ValueError, match="right padding"):
        model(tokens(1, 4), mask=torch.tensor([[False, True, True, True]]))
