"""One training loop for every model and task.

AdamW, warmup + cosine, gradient clipping, truncated BPTT over segments (the model's
``bptt_segments``), periodic evaluation on a fixed test set, best-checkpoint keep, resume.
Batch ``i`` of training is the task's train batch ``i``, so the data position is the step.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selmem.baselines import params, train_only_params
from selmem.experiment import ExperimentConfig, build
from selmem.metrics import memory_metrics
from selmem.model import SelectiveMemoryTransformer
from selmem.tasks.base import Batch, Task
from selmem.train import checkpoint, run
from selmem.train.optim import build_optimizer, build_scheduler
from selmem.train.seed import rng_state, seed_everything, set_rng_state


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"train.device={name!r} is not a device ({e}); use 'auto', 'cpu' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def task_loss(logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor, int]:
    """Mean cross-entropy over scored positions, number of correct argmax answers, scored count."""
    mask = batch.loss_mask
    n = int(mask.sum())
    if n == 0:
        raise ValueError("batch has no scored positions (loss_mask is all False)")
    picked, target = logits[mask], batch.targets[mask]
    return F.cross_entropy(picked.float(), target), (picked.argmax(-1) == target).sum(), n


def credit_kwargs(model: nn.Module, batch: Batch) -> dict[str, Tensor]:
    """selmem's credit for head B needs the scored positions and their targets; other models
    take no such arguments."""
    if not isinstance(model, SelectiveMemoryTransformer) or model.cfg.credit == "none":
        return {}
    return {"answer_mask": batch.loss_mask, "answer_targets": batch.targets}


def reset_kwargs(model: nn.Module, batch: Batch) -> dict[str, Tensor]:
    """Packed rows (batch.reset) restart selmem's memory at each document start; the baselines
    take no resets and stream the row as one."""
    if batch.reset is None or not isinstance(model, SelectiveMemoryTransformer):
        return {}
    return {"reset": batch.reset}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], segment_len: int, device: torch.device) -> dict[str, float]:
    """Loss (nats per scored token), accuracy, bits per scored token, and memory diagnostics
    averaged over the batches (token-weighted for loss and accuracy)."""
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    mem: dict[str, list[float]] = {}
    for batch in batches:
        batch = batch.to(device)
        out = model.forward_sequence(batch.tokens, segment_len, **reset_kwargs(model, batch))
        loss, right, n = task_loss(out.logits, batch)
        total, correct, count = total + float(loss) * n, correct + int(right), count + n
        for k, v in memory_metrics(out.stats, batch).items():
            mem.setdefault(k, []).append(v)
    model.train(was_training)
    result = {"loss": total / count, "accuracy": correct / count, "bits_per_token": total / count / math.log(2)}
    result.update({k: sum(v) / len(v) for k, v in mem.items() if v and all(math.isfinite(x) for x in v)})
    return result


@dataclass
class Trainer:
    """State of one run; ``fit()`` trains, evaluates and writes the run folder."""

    exp: ExperimentConfig
    run_dir: Path
    model: nn.Module
    task: Task
    device: torch.device

    @classmethod
    def create(cls, exp: ExperimentConfig) -> Trainer:
        exp = exp.resolved()
        tc = exp.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        device = resolve_device(tc.device)
        default = f"{exp.arch}-{exp.task.name}"
        run_dir = run.make_run_dir(tc.out_dir, tc.name, default, tc.resume)
        if tc.resume:
            _check_resumable(run_dir, exp)
        seed_everything(tc.seed)
        model, task = build(exp)
        run.write_command(run_dir)
        exp.to_yaml(run_dir / "config.yaml")
        (run_dir / "env.json").write_text(json.dumps(run.environment(device), indent=1))
        return cls(exp, run_dir, model.to(device), task, device)

    def fit(self) -> dict[str, Any]:
        exp, tc, task, model = self.exp, self.exp.train, self.task, self.model
        opt = build_optimizer(model, tc)
        sched = build_scheduler(opt, tc)
        logger = run.DiskLogger(self.run_dir / "metrics.jsonl")
        seg = exp.segment_len()
        test = task.test_set(tc.eval_batches, tc.batch_size)
        higher = task.chance is not None  # classification: accuracy up; LM: bits down
        step, best, elapsed = 0, None, 0.0
        if tc.resume:
            meta, rng = checkpoint.load_checkpoint(self.run_dir / "ckpt" / "last", model, opt, sched)
            step, best, elapsed = meta["step"], meta.get("best"), meta.get("elapsed", 0.0)
            set_rng_state(rng)
            run.truncate_metrics(self.run_dir, step)  # records past the checkpoint are redone
        start, tokens, t_log = time.time() - elapsed, 0, time.time()
        model.train()
        last_eval: dict[str, float] = {}
        while step < tc.steps:
            batch = task.batch("train", step, tc.batch_size).to(self.device)
            out = model.forward_sequence(batch.tokens, seg, **credit_kwargs(model, batch), **reset_kwargs(model, batch))
            loss, right, n = task_loss(out.logits, batch)
            total = loss + out.losses["aux"]
            if not torch.isfinite(total):
                raise FloatingPointError(f"loss is {float(total)} at step {step}; lower train.lr or "
                                         "raise train.grad_clip. The last checkpoint is intact in ckpt/last")
            opt.zero_grad(set_to_none=True)
            total.backward()
            if tc.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            step += 1
            tokens += batch.tokens.numel()
            out_of_time = bool(tc.time_budget_s) and time.time() - start > tc.time_budget_s
            if step % tc.log_every == 0 or step == tc.steps or out_of_time:
                now = time.time()
                rec = {"step": step, "split": "train", "loss": float(loss.detach()), "accuracy": int(right) / n,
                       "lr": sched.get_last_lr()[0], "tokens_per_s": tokens / max(now - t_log, 1e-9),
                       "elapsed": now - start,
                       **{f"aux/{k}": float(v.detach()) for k, v in out.losses.items()},
                       **memory_metrics(out.stats, batch)}
                logger.log(rec)
                tokens, t_log = 0, now
                self._progress(rec, last_eval)
            if step % tc.eval_every == 0 or step == tc.steps or out_of_time:
                last_eval = evaluate(model, test, seg, self.device)
                logger.log({"step": step, "split": "test", "elapsed": time.time() - start, **last_eval})
                key = "accuracy" if higher else "bits_per_token"
                score = last_eval[key] if higher else -last_eval[key]
                if best is None or score > best:
                    best = score
                    checkpoint.save_checkpoint(self.run_dir / "ckpt" / "best", model,
                                               meta={"step": step, key: last_eval[key]})
                checkpoint.save_checkpoint(self.run_dir / "ckpt" / "last", model, opt, sched, rng_state(),
                                           meta={"step": step, "best": best, "elapsed": time.time() - start})
                self._progress({"step": step, **last_eval}, last_eval, newline=True)
            if out_of_time:
                break
        return self._finish(step, time.time() - start, last_eval)

    def _finish(self, step: int, wall: float, final: dict[str, float]) -> dict[str, Any]:
        records = [r for r in run.read_metrics(self.run_dir) if r.get("split") == "train"]
        speeds = [r["tokens_per_s"] for r in records[1:]] or [r["tokens_per_s"] for r in records]
        peak = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        results = {"arch": self.exp.arch, "task": self.exp.task.name, "steps": step, "wall_s": wall,
                   "params": params(self.model), "train_only_params": train_only_params(self.model),
                   "state_floats": self.model.state_size(seq_len=self.task.seq_len), "chance": self.task.chance,
                   "train_tokens_per_s": sum(speeds) / max(len(speeds), 1), "peak_mem_mb": peak,
                   "test": final}
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=1))
        return results

    def _progress(self, rec: dict[str, Any], last_eval: dict[str, float], newline: bool = False) -> None:
        if not self.exp.train.progress:
            return
        msg = f"step {rec['step']:>6}/{self.exp.train.steps}  loss {rec['loss']:.4f}  acc {rec['accuracy']:.3f}"
        if "tokens_per_s" in rec:
            msg += f"  {rec['tokens_per_s']:,.0f} tok/s"
        if last_eval and not newline:
            msg += f"  | test acc {last_eval['accuracy']:.3f}"
        if newline:
            msg = "[test] " + msg
        print("\r" + msg.ljust(100), end="\n" if newline else "", file=sys.stderr, flush=True)


def _check_resumable(run_dir: Path, exp: ExperimentConfig) -> None:
    """A resumed run keeps its arch, model and task (train fields such as steps may change) and
    has steps left; raise ValueError naming what is wrong before the run's record is touched."""
    saved, new = ExperimentConfig.from_yaml(run_dir / "config.yaml").to_dict(), exp.to_dict()
    changed = [f"arch: {saved['arch']!r} -> {new['arch']!r}"] if saved["arch"] != new["arch"] else []
    for part in ("model", "task"):
        for key in sorted(set(saved[part]) | set(new[part])):
            if saved[part].get(key) != new[part].get(key):
                changed.append(f"{part}.{key}: {saved[part].get(key)!r} -> {new[part].get(key)!r}")
    if changed:
        raise ValueError(f"cannot resume {run_dir} with another model or task ({', '.join(changed[:5])}); "
                         f"start from its own config: --config {run_dir / 'config.yaml'}")
    step = json.loads((run_dir / "ckpt" / "last" / "train.json").read_text())["meta"]["step"]
    if step >= exp.train.steps:
        raise ValueError(f"{run_dir} already finished {step} of train.steps={exp.train.steps}; "
                         "raise train.steps to train it further")


def train(exp: ExperimentConfig) -> dict[str, Any]:
    """Train ``exp`` end to end; returns results.json's content (the run folder is in 'run_dir')."""
    trainer = Trainer.create(exp)
    results = trainer.fit()
    results["run_dir"] = str(trainer.run_dir)
    return results
