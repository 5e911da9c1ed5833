"""A stream-layout run's last checkpoint with head B's gate made decisive at evaluation: g = [sigmoid(s) > tau]
instead of sigmoid(s), for several tau, on 4 test batches of 32 rows; the answers split into the
opening bindings and the re-bindings (and stale answers: a re-bound key given its opening value).
It asks whether the half-written re-bindings are what the stale answers come from.

    .venv/bin/python docs/results/diag-recall/harden.py runs/NAME

Read by docs/FINDINGS.md section 12.
"""
import sys, torch
from selmem.experiment import ExperimentConfig, build
from selmem.train.checkpoint import load_model_weights
from selmem.memory.select import Select
torch.set_num_threads(1)
run = sys.argv[1]
exp = ExperimentConfig.from_yaml(f"{run}/config.yaml").resolved()
model, task = build(exp); load_model_weights(f"{run}/ckpt/last", model); model.eval()
T, P = task.segment_len, task.num_pairs
batches = task.test_set(4, 32)
for tau in [None, 0.2, 0.3, 0.4, 0.5]:
    for m in model.modules():
        if isinstance(m, Select):
            m.gate = (lambda s, head: torch.sigmoid(s)) if tau is None else (lambda s, head, t=tau: (torch.sigmoid(s) > t).to(s.dtype))
    tally = {"opening": [0, 0, 0], "re": [0, 0, 0]}
    with torch.no_grad():
        for batch in batches:
            out = model.forward_sequence(batch.tokens, T)
            pred = out.logits.argmax(-1)
            for r in range(batch.tokens.shape[0]):
                seq = batch.tokens[r].tolist(); opening = {seq[2*i]: seq[2*i+1] for i in range(P)}
                for p in batch.loss_mask[r].nonzero().flatten().tolist():
                    k, v = seq[p], int(batch.targets[r, p])
                    j = max(i for i in range(p - 1) if seq[i] == k and seq[i + 1] == v)
                    t = tally["opening" if j < 2 * P else "re"]
                    t[0] += 1; t[1] += int(pred[r, p]) == v; t[2] += j >= 2 * P and int(pred[r, p]) == opening.get(k)
    o, re_ = tally["opening"], tally["re"]
    print(f"tau {tau}: all {(o[1]+re_[1])/(o[0]+re_[0]):.3f} opening {o[1]/o[0]:.3f} rebind {re_[1]/re_[0]:.3f} stale {re_[2]/re_[0]:.3f}", flush=True)
