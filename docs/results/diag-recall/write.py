"""Why a stream-layout run's answers fail: the write of the opening pairs, and the read at the
answers. For runs/NAME's checkpoint TAG (default last), on one test batch of 32 rows:

- per layer, on segment 0: head B's mean gate on the opening pairs' values, keys and on the other
  tokens of the segment; a value candidate's share of slot content after the segment's writes
  (``contrib`` summed over slots: 1 = it owns a slot, small = later writes of the segment took
  its slot); into how many distinct slots the pairs' values go (of ``num_pairs``);
- head B's target from the probe (the teacher's, ``probe_target``) on the opening values, on the
  later bindings' key and value and on the other tokens;
- per layer, in each later segment: what is left of the opening values' slot content when the
  segment starts, head B's gate on the later bindings' tokens (re-bindings) and on the other
  tokens, and how many other tokens a row pass 0.5; a re-binding value's share of slot content and
  how often its largest share lands in the slot of its key's opening value (content overwrite);
- the write address on the fresh memory (write_new='allocate' only): the probability of "new"
  at the selected candidates, their "new fact" logit and their largest content logit;
- per layer, at the answers after segment 0: the read teacher's mass (how much of what the probe
  retrieves the layer's slots still hold) and how often the read's most-read slot is the
  teacher's;
- the answers by the binding they answer: one of the opening pairs, or a later re-binding
  (``rebind``), and how often a re-bound key gets its opening value (stale).

    .venv/bin/python docs/results/diag-recall/write.py runs/NAME [TAG]

Read by docs/FINDINGS.md section 12.
"""

from __future__ import annotations

import sys

import torch

import selmem.memory.address as address
from selmem.experiment import ExperimentConfig, build
from selmem.memory.credit import answer_positions, teacher_target
from selmem.train.checkpoint import load_model_weights

torch.set_num_threads(1)
run, tag = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "last")
exp = ExperimentConfig.from_yaml(f"{run}/config.yaml").resolved()
model, task = build(exp)
load_model_weights(f"{run}/ckpt/{tag}", model)  # the probe's weights too: it gives the read's target
model.eval()
T, M, P = task.segment_len, model.cfg.slots, task.num_pairs
calls = []
plain = address.content_or_allocate


def spy(a, cand, gate, logits, usage, age):  # records the first (fresh-memory) call's competition
    occupied = (usage / 0.1).clamp(1e-6, 1.0).log()
    occupied = torch.where(usage >= 1e-4, occupied, float("-inf")) if hasattr(address, "CONTENT_MAX") else occupied
    p = torch.cat([logits + occupied[:, None, :], a.mix(cand)], dim=-1).softmax(-1)
    calls.append((gate, p[..., M], a.mix(cand)[..., 0], logits.amax(-1)))
    return plain(a, cand, gate, logits, usage, age)


address.content_or_allocate = spy
batch = task.test_set(1, 32)[0]
with torch.no_grad():
    out = model.forward_sequence(batch.tokens, T)
    _, attn = model.probe(batch.tokens, T, batch.loss_mask)
print(f"{run} {tag}: accuracy {float((out.logits.argmax(-1) == batch.targets)[batch.loss_mask].float().mean()):.3f}")
B = batch.tokens.shape[0]
values = torch.zeros_like(batch.tokens, dtype=torch.bool)
values[:, 1 : 2 * P : 2] = True
keys = torch.zeros_like(values)
keys[:, 0 : 2 * P : 2] = True
segs = out.stats["segments"]
for l in range(len(segs[0]["layers"])):
    lay = segs[0]["layers"][l]
    g, share, slot = lay["gate"], lay["contrib"].sum(-1), lay["contrib"].argmax(-1)  # (B, T), (B, C), (B, C)
    v, k = values.gather(1, lay["cand_pos"]), keys.gather(1, lay["cand_pos"])
    other = ~(values | keys)[:, :T]
    distinct = sum(len(set(slot[b][v[b]].tolist())) for b in range(B)) / B
    print(f"L{l} segment 0: gate on values {g[values[:, :T]].mean():.3f}, keys {g[keys[:, :T]].mean():.3f}, "
          f"others {g[other].mean():.3f}; a value's share of slot content {share[v].mean():.3f} "
          f"(a key's {share[k].mean():.3f}); the {P} values go into {distinct:.1f} distinct slots")
rebound = batch.relevant.clone()
rebound[:, : 2 * P] = False  # the later bindings' two tokens
if model.cfg.credit == "probe":  # head B's target, as the teacher computes it
    _, nattn = model.probe(batch.tokens, T, batch.loss_mask, with_null=True)
    goal = teacher_target(nattn, answer_positions(batch.loss_mask)[0], B, model.cfg.probe_target)
    odd_all = (torch.arange(goal.shape[1]) % 2 == 1)[None, :]
    rest = ~(batch.relevant | values)
    print(f"teacher's target ({model.cfg.probe_target}): opening values {goal[values & batch.relevant].mean():.3f}, "
          f"later bindings' key / value {goal[rebound & ~odd_all].mean():.3f} / {goal[rebound & odd_all].mean():.3f}, "
          f"others {goal[rest].mean():.3f}")
for l in range(len(segs[0]["layers"])):
    held = segs[0]["layers"][l]["contrib"]  # (B, C, M): segment 0's candidates in the slots
    v0 = values.gather(1, segs[0]["layers"][l]["cand_pos"])
    parts = []
    for s in range(1, len(segs)):
        lay, span = segs[s]["layers"][l], slice(s * T, (s + 1) * T)
        g, reb = lay["gate"], rebound[:, span]
        other, odd = ~reb, (torch.arange(T) % 2 == 1)[None, :]  # a binding's value sits at an odd position
        parts.append(f"seg {s}: opening values' share {held.sum(-1)[v0].mean():.3f}, gate on later bindings' "
                     f"key / value {g[reb & ~odd].mean():.3f} / {g[reb & odd].mean():.3f}, on others {g[other].mean():.3f} "
                     f"({float((g > 0.5)[other].sum()) / B:.1f} a row past 0.5)")
        held = held * lay["kept"][:, None, :]
    print(f"L{l} later segments: " + "; ".join(parts))
    # where a re-binding's value goes: over its key's opening value (content overwrite) or elsewhere
    home = {}  # (row, key) -> the slot of its opening value in segment 0
    lay0 = segs[0]["layers"][l]
    for b in range(B):
        for c, p in enumerate(lay0["cand_pos"][b].tolist()):
            if p < 2 * P and p % 2 == 1:
                home[b, int(batch.tokens[b, p - 1])] = int(lay0["contrib"][b, c].argmax())
    same = n = share = 0.0
    for s_ in range(1, len(segs)):
        lay = segs[s_]["layers"][l]
        for b in range(B):
            for c, p in enumerate(lay["cand_pos"][b].tolist()):
                if p % 2 == 1 and bool(rebound[b, p]) and (b, int(batch.tokens[b, p - 1])) in home:
                    n += 1
                    share += float(lay["contrib"][b, c].sum())
                    same += int(lay["contrib"][b, c].argmax()) == home[b, int(batch.tokens[b, p - 1])]
    if n:
        print(f"L{l} re-binding values: {int(n)}, share of slot content {share / n:.3f}, into their key's "
              f"opening slot {same / n:.3f}")
if calls:
    gate, new, mix, top = calls[0]
    sel = gate > 0.5
    print(f"fresh memory, selected candidates (all layers): p(new) {new[sel].mean():.3f}, new-fact logit "
          f"{mix[sel].mean():.2f}, largest content logit {top[sel].mean():.2f}")
row, pos = answer_positions(batch.loss_mask)
later = pos >= T
for l, read in enumerate(out.reads):
    r = read[row, pos, :M]
    target = torch.zeros_like(r)
    cand_pos, shares = [], []
    for s, seg in enumerate(segs):
        lay = seg["layers"][l]
        if shares:
            at = attn.gather(1, torch.cat(cand_pos, 1)[row].clamp(max=attn.shape[1] - 1))
            here = (pos // T == s).to(r.dtype)[:, None]
            target = target + here * torch.einsum("ac,acm->am", at, torch.cat(shares, 1)[row])
        shares = [sh * lay["kept"][:, None, :] for sh in shares]
        cand_pos.append(lay["cand_pos"])
        shares.append(lay["contrib"])
    agree = (r.argmax(-1) == target.argmax(-1))[later].float().mean()
    print(f"L{l} answers after segment 0: teacher's mass {target.sum(-1)[later].mean():.3f}, most-read slot is "
          f"the teacher's {agree:.3f}, read mass on own slots {r.sum(-1)[later].mean():.3f}")
pred = out.logits.argmax(-1)
tally = {"opening": [0, 0, 0], "re-binding": [0, 0, 0]}  # answers, right, stale
for r in range(B):
    seq = batch.tokens[r].tolist()
    opening = {seq[2 * i]: seq[2 * i + 1] for i in range(P)}
    for p in batch.loss_mask[r].nonzero().flatten().tolist():
        k, v = seq[p], int(batch.targets[r, p])
        j = max(i for i in range(p - 1) if seq[i] == k and seq[i + 1] == v)  # the binding answered
        t = tally["opening" if j < 2 * P else "re-binding"]
        t[0] += 1
        t[1] += int(pred[r, p]) == v
        t[2] += j >= 2 * P and int(pred[r, p]) == opening.get(k)
for kind, (n, right, stale) in tally.items():
    if n:
        print(f"answers of {kind}s: {n}, right {right / n:.3f}" + (f", stale {stale / n:.3f}" if kind != "opening" else ""))
