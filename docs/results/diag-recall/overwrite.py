"""Where a marked overwrite run loses its answers between its best checkpoint and its last: for
runs/NAME's ckpt/best and ckpt/last, on 4 test batches of 32 rows,

- accuracy by the key's history: bound once ("single") or bound again ("rebound"), and the
  segment of its latest binding (``@segS``); and how often a re-bound key gets its first value;
- per layer, head B's mean gate on the pair tokens of the latest bindings and on every other
  token, and how many other tokens per row pass 0.5, by segment;
- the teacher's target (the probe's retrieval attention at the answers, summed, clamped at 1;
  and the run's own ``probe_target`` where it is 'peak') on the same two sets, with the probe's
  own weights; and each layer's gate on a binding's key and on its value.

    .venv/bin/python docs/results/diag-recall/overwrite.py runs/NAME

Read by docs/FINDINGS.md section 12.
"""

from __future__ import annotations

import collections
import sys

import torch

from selmem.experiment import ExperimentConfig, build
from selmem.memory.credit import answer_positions, teacher_target
from selmem.train.checkpoint import load_model_weights

torch.set_num_threads(1)
run = sys.argv[1]
exp = ExperimentConfig.from_yaml(f"{run}/config.yaml").resolved()
for tag in ("best", "last"):
    model, task = build(exp)
    load_model_weights(f"{run}/ckpt/{tag}", model)  # the probe's weights too: it gives the target
    model.eval()
    T, S = task.segment_len, task.set_id
    acc: dict[str, list[int]] = {}
    stale = [0, 0]  # re-bound keys asked, answered with their first value
    gates = collections.defaultdict(list)
    for batch in task.test_set(4, 32):
        with torch.no_grad():
            out = model.forward_sequence(batch.tokens, T)
            _, attn = model.probe(batch.tokens, T, batch.loss_mask, with_null=True)
        pred = out.logits.argmax(-1)
        for r, row in enumerate(batch.tokens.tolist()):
            bound: dict[int, list[int]] = {}
            first: dict[int, int] = {}
            for i in range(len(row) - 2):
                if row[i] == S:
                    bound.setdefault(row[i + 1], []).append(i // T)
                    first.setdefault(row[i + 1], row[i + 2])
            for p in batch.loss_mask[r].nonzero().flatten().tolist():
                segs = bound[row[p]]
                kind = f"{'rebound' if len(segs) > 1 else 'single'}@seg{segs[-1]}"
                acc.setdefault(kind, [0, 0])
                acc[kind][0] += 1
                acc[kind][1] += int(pred[r, p] == batch.targets[r, p])
                if len(segs) > 1:
                    stale[0] += 1
                    stale[1] += int(pred[r, p] == first[row[p]])
        row_i, _ = answer_positions(batch.loss_mask)
        target = teacher_target(attn, row_i, batch.tokens.shape[0], "sum")
        rel = batch.relevant
        gates["target"].append((target[rel].mean(), target[~rel].mean()))
        if model.cfg.probe_target == "peak":
            tp = teacher_target(attn, row_i, batch.tokens.shape[0], "peak")
            gates["peak"].append((tp[rel].mean(), tp[~rel].mean()))
        tok = batch.tokens
        is_set = tok == S
        role = {"key": rel & torch.nn.functional.pad(is_set[:, :-1], (1, 0)),
                "value": rel & torch.nn.functional.pad(is_set[:, :-2], (2, 0))}
        seg = (torch.arange(rel.shape[1]) // T).expand_as(rel)
        for l, s in enumerate(out.scores):
            g = torch.sigmoid(s)
            other = (g > 0.5) & ~rel
            by_seg = [float(other[seg == k].sum()) / rel.shape[0] for k in range(task.num_segments)]
            gates[f"L{l}"].append((g[rel].mean(), g[~rel].mean(), by_seg))
            gates[f"L{l}role"].append([float(g[m].mean()) for m in role.values()])
    print(f"{tag}: accuracy " + ", ".join(f"{k} {c / n:.3f} (n={n})" for k, (n, c) in sorted(acc.items()))
          + f"; re-bound keys answered with their first value {stale[1] / max(stale[0], 1):.3f}")
    t = torch.tensor([[float(a), float(b)] for a, b in gates["target"]]).mean(0)
    print(f"  teacher target (sum): pair tokens {t[0]:.3f}, other {t[1]:.3f}")
    if gates["peak"]:
        t = torch.tensor([[float(a), float(b)] for a, b in gates["peak"]]).mean(0)
        print(f"  teacher target (peak, the run's): pair tokens {t[0]:.3f}, other {t[1]:.3f}")
    for l in range(len(out.scores)):
        rows = gates[f"L{l}"]
        pair = sum(float(r[0]) for r in rows) / len(rows)
        rest = sum(float(r[1]) for r in rows) / len(rows)
        by_seg = [sum(r[2][k] for r in rows) / len(rows) for k in range(task.num_segments)]
        print(f"  L{l} gate: pair tokens {pair:.3f}, other {rest:.3f}; other tokens past 0.5 per row "
              f"by segment {[round(x, 1) for x in by_seg]}")
        roles = torch.tensor(gates[f"L{l}role"]).mean(0)
        print(f"  L{l} gate on a binding's key / value: " + " / ".join(f"{x:.3f}" for x in roles))
