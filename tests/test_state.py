"""MemoryState: constant size, detach is the BPTT boundary, save/load resumes a stream exactly."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
import torch
from safetensors.torch import save_file

from selmem import MemoryState
from tests.helpers import tiny_model, tokens


def test_init_state_shapes_and_values():
    model = tiny_model()
    cfg = model.cfg
    state = model.init_state(3)
    L, M, dm = cfg.n_layers, cfg.slots, cfg.d_mem
    assert state.slots.shape == (L, 3, M, dm)
    assert state.usage.shape == state.age.shape == state.provenance.shape == (L, 3, M)
    assert state.position.shape == (3,)
    assert state.batch_size == 3 and state.n_layers == L
    assert torch.equal(state.slots[:, 1], model.init_slots)
    assert (state.usage == 0).all() and (state.age == 0).all()
    assert (state.provenance == -1).all() and (state.position == 0).all()
    assert state.num_floats() == L * M * (dm + 2)


def test_init_state_rejects_empty_batch():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        tiny_model().init_state(0)


def test_num_floats_constant_over_stream():
    model = tiny_model()
    state = model.init_state(2)
    n0, shapes = state.num_floats(), {f.name: getattr(state, f.name).shape for f in fields(state)}
    out = model.forward_sequence(tokens(2, 30), segment_len=7)
    assert out.state.num_floats() == n0
    assert {f.name: getattr(out.state, f.name).shape for f in fields(out.state)} == shapes


def test_detach_keeps_values_drops_graph():
    model = tiny_model()
    state = model(tokens(2, 5)).state
    assert state.slots.requires_grad
    det = state.detach()
    assert not any(getattr(det, f.name).requires_grad for f in fields(det))
    assert all(torch.equal(getattr(det, f.name), getattr(state, f.name)) for f in fields(state))


def test_to_device_and_dtype_preserved():
    state = tiny_model().init_state(2).to("cpu")
    assert state.slots.dtype == torch.float64 and state.provenance.dtype == torch.long


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    state = model.forward_sequence(tokens(2, 12), segment_len=5).state
    state.save(tmp_path / "s.safetensors")
    assert not list(tmp_path.glob("*.tmp")), "save must not leave its temporary file behind"
    loaded = MemoryState.load(tmp_path / "s.safetensors")
    for f in fields(state):
        a, b = getattr(state, f.name), getattr(loaded, f.name)
        assert a.dtype == b.dtype and torch.equal(a.detach(), b), f.name


def test_save_load_continue_gives_identical_outputs(tmp_path):
    """Resume a stream from disk: the continuation equals the uninterrupted stream bit for bit."""
    model = tiny_model(dtype=torch.float32).eval()
    x = tokens(2, 24)
    with torch.no_grad():
        first = model.forward_sequence(x[:, :8], segment_len=8)
        first.state.save(tmp_path / "s.safetensors")
        straight = model.forward_sequence(x[:, 8:], segment_len=8, state=first.state)
        resumed = model.forward_sequence(
            x[:, 8:], segment_len=8, state=MemoryState.load(tmp_path / "s.safetensors")
        )
    assert torch.equal(straight.logits, resumed.logits)
    for f in fields(straight.state):
        assert torch.equal(getattr(straight.state, f.name), getattr(resumed.state, f.name)), f.name


def test_load_rejects_other_files(tmp_path):
    save_file({"slots": torch.zeros(1, 1, 1, 1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match=r"not a MemoryState file: missing \['usage'"):
        MemoryState.load(tmp_path / "x.safetensors")


def test_every_flipped_byte_of_a_state_file_is_refused_naming_it(tmp_path):
    """The data's SHA-256 in the header catches what safetensors cannot see (a flipped data byte
    loaded silently before); a flipped header byte breaks the header or its recorded hash."""
    from selmem.files import BadFile

    path = tmp_path / "s.safetensors"
    tiny_model().forward_sequence(tokens(2, 12), segment_len=5).state.save(path)
    raw = path.read_bytes()
    for i in range(len(raw)):
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
        with pytest.raises(BadFile, match=re.escape(str(path))):
            MemoryState.load(path)
    path.write_bytes(raw)
    MemoryState.load(path)  # the undamaged file still loads


@pytest.mark.parametrize("position", [torch.zeros(3, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long),
                                      torch.zeros(2), torch.zeros(2, dtype=torch.int32)],
                         ids=["other-batch", "2-d", "float", "int32"])
def test_a_state_file_with_a_wrong_position_is_refused_by_name(tmp_path, position):
    """position is (B,) long: another shape or dtype, saved consistently (the hash matches), is
    refused naming the file and the field, before forward would misread it."""
    from dataclasses import replace

    from selmem.files import BadFile

    state = replace(tiny_model().init_state(2), position=position)
    path = tmp_path / "s.safetensors"
    state.save(path)
    with pytest.raises(BadFile, match=re.escape(str(path)) + r": position must be torch.int64 of shape \(2,\)"):
        MemoryState.load(path)


def test_a_full_disk_names_the_state_file(tmp_path, monkeypatch):
    """A full disk made save_file raise a SafetensorError naming no file (issue 28)."""
    from safetensors import SafetensorError

    from selmem import state as state_module

    def full(tensors, filename, *args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(state_module, "save_file", full)
    with pytest.raises(OSError, match=re.escape(f"{tmp_path / 's.safetensors'}: cannot write it (") + ".*No space"):
        tiny_model().init_state(1).save(tmp_path / "s.safetensors")
