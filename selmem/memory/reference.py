"""Slow loop-over-tokens-and-slots form of the write, the test oracle of update.py.

Never used in training. Written as literally as possible from equation (1) of update.py:
one candidate at a time, one slot at a time, tracking every source's surviving share.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selmem.memory.update import Written


def update_reference(slots: Tensor, usage: Tensor, age: Tensor, provenance: Tensor, cand: Tensor,
                     a: Tensor, cand_pos: Tensor, read_mass: Tensor, usage_decay: float,
                     slot_decay: Tensor | None = None, gate: Tensor | None = None) -> Written:
    """Same arguments and results as ``update.update``, computed with Python loops."""
    B, C, M = a.shape
    out_slots, out_usage, out_age, out_prov, out_kept, out_contrib = [], [], [], [], [], []
    for b in range(B):
        rows, us, ags, provs, keeps, contribs = [], [], [], [], [], []
        for j in range(M):
            s = slots[b, j] * (slot_decay[j] if slot_decay is not None else 1.0)
            kept = torch.ones((), dtype=a.dtype)
            share = [torch.zeros((), dtype=a.dtype) for _ in range(C)]  # surviving share of each candidate
            for t in range(C):
                w = a[b, t, j]
                s = (1 - w) * s + w * cand[b, t]
                kept = kept * (1 - w)
                share = [x * (1 - w) for x in share]
                share[t] = w
            rows.append(s)
            importance = sum(share[t] * (gate[b, t] if gate is not None else 1.0) for t in range(C))
            us.append(usage_decay * kept * usage[b, j] + importance + read_mass[b, j])
            ags.append((age[b, j] + 1) * kept)
            best_t = max(range(C), key=lambda t: (float(share[t].detach()), -t))
            provs.append(cand_pos[b, best_t] if float(share[best_t].detach()) > float(kept.detach())
                         else provenance[b, j])
            keeps.append(kept)
            contribs.append(torch.stack(share))
        out_slots.append(torch.stack(rows))
        out_usage.append(torch.stack(us))
        out_age.append(torch.stack(ags))
        out_prov.append(torch.stack(provs))
        out_kept.append(torch.stack(keeps))
        out_contrib.append(torch.stack(contribs, dim=1))
    return Written(torch.stack(out_slots), torch.stack(out_usage), torch.stack(out_age),
                   torch.stack(out_prov), torch.stack(out_kept), torch.stack(out_contrib))
