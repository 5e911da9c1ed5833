"""Where a segment's selected candidates go: for a run folder's best checkpoint, on one test batch
of 16 rows, per layer, how many candidates of segment 0 head B selects (gate > 0.5) and into how
many distinct slots they are written (the argmax of their write weights).

    .venv/bin/python docs/results/diag-recall/slots.py runs/NAME

Read by docs/FINDINGS.md section 12; the runs are named in docs/results/diag-recall/README.md.
"""

from __future__ import annotations

import sys

import torch

from selmem.experiment import ExperimentConfig, build
from selmem.train.checkpoint import load_model_weights

run = sys.argv[1]
exp = ExperimentConfig.from_yaml(f"{run}/config.yaml")
model, task = build(exp)
load_model_weights(f"{run}/ckpt/best", model, inference=True)
model.eval()
batch = task.test_set(1, 16)[0]
with torch.no_grad():
    out = model.forward_sequence(batch.tokens, task.segment_len)
for l, lay in enumerate(out.stats["segments"][0]["layers"]):
    g, slot = lay["gate"], lay["write"].argmax(-1)  # (B, T), (B, C): one candidate per token here
    chosen = [(g[r] > 0.5).sum().item() for r in range(16)]
    distinct = [len(set(slot[r][g[r] > 0.5].tolist())) for r in range(16)]
    rel = batch.relevant[:, : task.segment_len]
    print(f"L{l}: selected {sum(chosen) / 16:.1f} per row into {sum(distinct) / 16:.1f} distinct slots; "
          f"mean gate {g[rel].mean():.2f} on pair tokens, {g[~rel].mean():.3f} elsewhere")
