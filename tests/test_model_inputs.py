"""Bad input at the model's boundary gets a clear error naming the problem, never a stack
trace from deep inside torch: token ids, dtypes, ranks, empty and oversized segments, states made
for another batch, config, dtype or shape."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from selmem.decode import new_cache
from tests.helpers import tiny_model, tokens


@pytest.mark.parametrize(
    "make, error, match",
    [
        pytest.param(
            lambda: torch.tensor([[0, 16]]),
            ValueError,
            r"token ids must lie in \[0, vocab_size=16\), got range \[0, 16\]",
            id="id-too-large",
        ),
        pytest.param(
            lambda: torch.tensor([[-1, 3]]),
            ValueError,
            r"token ids must lie in \[0, vocab_size=16\)",
            id="negative-id",
        ),
        pytest.param(
            lambda: torch.zeros(2, 0, dtype=torch.long), ValueError, "empty segment", id="empty"
        ),
        pytest.param(
            lambda: torch.zeros(2, 33, dtype=torch.long),
            ValueError,
            "exceeds max_segment_len=32.*forward_sequence",
            id="too-long",
        ),
        pytest.param(
            lambda: torch.zeros(2, 4),
            TypeError,
            "integer tensor of token ids, got dtype torch.float32",
            id="float",
        ),
        pytest.param(
            lambda: torch.zeros(4, dtype=torch.long),
            ValueError,
            r"shape \(batch, segment_len\), got \(4,\)",
            id="1d",
        ),
        pytest.param(
            lambda: torch.zeros(2, 4, 3, dtype=torch.long),
            ValueError,
            r"shape \(batch, segment_len\), got \(2, 4, 3\)",
            id="3d",
        ),
        pytest.param(lambda: [[0, 1]], TypeError, "must be a torch.Tensor", id="list"),
    ],
)
def test_bad_tokens_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        tiny_model()(make())


@pytest.mark.parametrize(
    "other, match",
    [
        pytest.param(
            dict(slots=5), r"state does not fit this model: slots \(2, 2, 5, 16\)", id="other-slots"
        ),
        pytest.param(
            dict(d_mem=8),
            r"state does not fit this model.*d_mem\) = \(2, 2, 4, 16\)",
            id="other-d_mem",
        ),
        pytest.param(
            dict(n_layers=3),
            r"state does not fit this model: slots \(3, 2, 4, 16\)",
            id="other-n_layers",
        ),
    ],
)
def test_state_from_other_config_raises(other, match):
    state = tiny_model(**other).init_state(2)
    with pytest.raises(ValueError, match=match):
        tiny_model()(tokens(2, 4), state)


def test_state_from_other_batch_or_type_raises():
    model = tiny_model()
    with pytest.raises(
        ValueError, match="state was made for batch size 3, but tokens have batch size 2"
    ):
        model(tokens(2, 4), model.init_state(3))
    with pytest.raises(TypeError, match="state must be a MemoryState"):
        model(tokens(2, 4), {"slots": None})


def test_state_with_wrong_dtype_or_bookkeeping_shape_raises():
    model = tiny_model()  # float64
    state = model.init_state(2)
    single = dataclasses.replace(state, slots=state.slots.float(), usage=state.usage.float(), age=state.age.float())
    with pytest.raises(ValueError, match="state has dtype torch.float32 but the model runs in torch.float64"):
        model(tokens(2, 4), single)
    with pytest.raises(ValueError, match=r"state: usage must be torch.float64 of shape \(2, 2, 4\) .* got "
                                         r"torch.float64 of shape \(2, 2, 3\)"):
        model(tokens(2, 4), dataclasses.replace(state, usage=state.usage[..., :3]))


#: one field of a fresh state (batch 2) changed, and the field the error must name (issue 28)
BAD_FIELDS = [
    pytest.param("position", lambda s: s.position.double(), id="position-float"),
    pytest.param("position", lambda s: s.position.int(), id="position-int32"),
    pytest.param("position", lambda s: s.position[:, None], id="position-(B,1)"),
    pytest.param("position", lambda s: s.position[:1], id="position-(1,)"),
    pytest.param("position", lambda s: s.position[0], id="position-0d"),
    pytest.param("position", lambda s: 0, id="position-int"),
    pytest.param("provenance", lambda s: s.provenance.double(), id="provenance-float"),
    pytest.param("usage", lambda s: s.usage.float(), id="usage-float32"),
    pytest.param("age", lambda s: s.age[:, :, :3], id="age-3-slots"),
]

#: every entry point that takes a user's MemoryState, on 16 tokens of batch 2 in segments of 8
ENTRIES = {
    "forward": lambda m, x, s: m(x[:, :8], s),
    "forward_sequence": lambda m, x, s: m.forward_sequence(x, 8, s),
    "checked": lambda m, x, s: m.forward_sequence(x, 8, s, checked=True),  # the trainer's path
    "padded": lambda m, x, s: m.forward_sequence(x, 8, s, attention_mask=torch.ones_like(x, dtype=torch.bool)),
    "decode": lambda m, x, s: m.decode(x, new_cache(m, 2, 8, state=s)),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("field, change", BAD_FIELDS)
def test_a_state_field_of_the_wrong_shape_or_dtype_is_named(entry, field, change):
    """A position of the wrong shape or dtype ran on silently or failed deep inside torch (issue
    28); every entry point now refuses it, in one line naming the field, before any compute."""
    model = tiny_model()
    state = model.init_state(2)
    state = dataclasses.replace(state, **{field: change(state)})
    with pytest.raises(ValueError, match=rf"^state: {field} must be ") as err:
        ENTRIES[entry](model, tokens(2, 16), state)
    assert "\n" not in str(err.value)


def test_forward_sequence_errors():
    model = tiny_model()
    with pytest.raises(
        ValueError, match=r"segment_len must be in \[1, max_segment_len=32\], got 33"
    ):
        model.forward_sequence(tokens(2, 40), segment_len=33)
    with pytest.raises(ValueError, match="tokens is empty"):
        model.forward_sequence(torch.zeros(2, 0, dtype=torch.long), segment_len=4)
    with pytest.raises(ValueError, match=r"\(batch, length\) tensor, got shape \(5,\)"):
        model.forward_sequence(torch.zeros(5, dtype=torch.long), segment_len=4)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8], ids=str)
def test_accepted_integer_dtypes_work(dtype):
    model = tiny_model().eval()
    x = tokens(2, 6)
    assert torch.equal(model(x.to(dtype)).logits, model(x).logits)


# --- pitfalls ------------------------------------------------------------------------------------
