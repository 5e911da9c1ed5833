"""One training loop for every model and task.

AdamW, warmup + cosine, gradient clipping, truncated BPTT over segments (the model's
``bptt_segments``), periodic evaluation on a fixed test set, best-checkpoint keep, resume.
Batch ``i`` of training is the task's train batch ``i``, so the data position is the step.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selmem.baselines import params, train_only_params
from selmem.experiment import ExperimentConfig, build
from selmem.files import writing
from selmem.metrics import memory_metrics
from selmem.memory.objective import Objective
from selmem.state import NonFiniteState
from selmem.tasks.base import LOWER_IS_BETTER, Batch, Task
from selmem.train import checkpoint, dist, run
from selmem.train.faults import grad_norm, nonfinite_step, nonfinite_weight
from selmem.train.optim import build_optimizer, build_scheduler
from selmem.train.progress import Progress
from selmem.train.seed import rng_state, seed_everything, set_rng_state


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    """The device ``name`` ('auto', 'cpu', 'cuda', 'cuda:N'), or a ValueError naming ``field``
    (the config field or flag it came from) when it is none or is not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"{field}={name!r} is not a device ({e}); use 'auto', 'cpu' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field}={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def task_loss(logits: Tensor, batch: Batch, scored: int | None = None) -> tuple[Tensor, Tensor, int]:
    """Mean cross-entropy over scored positions, number of correct argmax answers, scored count.

    The scored positions are weighted by the mask, not gathered (a boolean index waits for the
    device to count them): given ``scored``, the mask's count taken on the host, this makes no
    host sync."""
    mask = batch.loss_mask
    n = int(mask.sum()) if scored is None else scored
    if n == 0:
        raise ValueError("batch has no scored positions (loss_mask is all False)")
    target = batch.targets.masked_fill(~mask, 0)  # any class: unscored positions weigh 0
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")  # (B*N,)
    loss = (ce * mask.flatten()).sum() / n
    return loss, ((logits.argmax(-1) == target) & mask).sum(), n


def distant_recall(batch: Batch, segment_len: int) -> Tensor | None:
    """(B, N) bool, the scored positions whose target completes an n-gram that occurred earlier
    only outside their own segment and the previous one (``Batch.repeat_of`` before the window
    ``[(t // segment_len - 1) * segment_len, t]`` of position t): what a recent-window model
    (txl's cache of one segment) cannot copy and a memory of earlier segments can. None without
    ``repeat_of``."""
    if batch.repeat_of is None:
        return None
    t = torch.arange(batch.tokens.shape[1], device=batch.tokens.device)
    window = (t // segment_len - 1) * segment_len  # (N,) the first input position t's window holds
    # occurrence u's last byte is input position u + 1
    return batch.loss_mask & (batch.repeat_of >= 0) & (batch.repeat_of + 1 < window)


def host_checks(model: nn.Module, host: Batch) -> int:
    """The checks of a training batch that read its values, made on the batch before it moves to
    the device (no device sync there): the token range, for a model that is then told so
    (``checked`` among its ``sequence_inputs``: selmem), and the scored count, returned."""
    if "checked" in model.sequence_inputs:
        model.check_values(host.tokens, None)
    return int(host.loss_mask.sum())


def forward_kwargs(model: nn.Module, batch: Batch, scored: int) -> dict[str, Any]:
    """What forward_sequence takes besides the tokens on the training path, after ``host_checks``,
    as far as the model names it in its ``sequence_inputs`` (selmem; the baselines take none):
    packed rows' resets, the scored positions, their targets and count for head B's credit (not
    with credit='none'), and that the token range is checked."""
    given = {**reset_kwargs(model, batch), "answer_mask": batch.loss_mask, "answer_targets": batch.targets,
             "answer_count": scored, "checked": True}
    return {k: v for k, v in given.items() if k in model.sequence_inputs}


def reset_kwargs(model: nn.Module, batch: Batch) -> dict[str, Tensor]:
    """Packed rows (batch.reset) restart the memory at each document start where the model takes
    resets (selmem); the baselines take none and stream the row as one."""
    if batch.reset is None or "reset" not in model.sequence_inputs:
        return {}
    return {"reset": batch.reset}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], segment_len: int, device: torch.device,
             task: Task | None = None) -> dict[str, float]:
    """Loss (nats per scored token), accuracy, bits per scored token, exact match (the fraction
    of rows with a scored position whose every scored position is right: whole answers), and
    memory diagnostics averaged over the batches (token-weighted for loss and accuracy). Where the
    batches carry ``values`` (molecules), also the MAE and R^2 of ``task.predict_values``; where
    they carry ``repeat_of`` (code-lm), the bits per token on the distant recall positions
    (``distant_recall``: ``bits_per_token_recall``), on the rest (``bits_per_token_rest``), the
    recall positions' share of the scored ones (``recall_share``) and the bits in each segment of
    the row, the first first (``bits_per_token_by_segment``: does the memory keep helping?)."""
    was_training = model.training
    model.eval()
    total, correct, count, exact, rows = 0.0, 0, 0, 0, 0
    sliced = {"recall": [0.0, 0], "rest": [0.0, 0]}  # nats, scored positions of each slice
    by_segment: list[list[float]] = []  # per segment of the row: nats, scored positions
    mem: dict[str, list[float]] = {}
    predicted, true = [], []
    for batch in batches:
        batch = batch.to(device)
        out = model.forward_sequence(batch.tokens, segment_len, **reset_kwargs(model, batch))
        loss, right, n = task_loss(out.logits, batch)
        total, correct, count = total + float(loss) * n, correct + int(right), count + n
        wrong = (out.logits.argmax(-1) != batch.targets) & batch.loss_mask
        scored = batch.loss_mask.any(1)
        exact, rows = exact + int((scored & ~wrong.any(1)).sum()), rows + int(scored.sum())
        recall = distant_recall(batch, segment_len)
        if recall is not None:
            ce = F.cross_entropy(out.logits.float().transpose(1, 2), batch.targets, reduction="none")  # (B, N)
            for name, where in (("recall", recall), ("rest", batch.loss_mask & ~recall)):
                sliced[name][0] += float(ce[where].double().sum())
                sliced[name][1] += int(where.sum())
            for i, at in enumerate(range(0, ce.shape[1], segment_len)):
                if i == len(by_segment):
                    by_segment.append([0.0, 0])
                where = batch.loss_mask[:, at : at + segment_len]
                by_segment[i][0] += float(ce[:, at : at + segment_len][where].double().sum())
                by_segment[i][1] += int(where.sum())
        if batch.values is not None and task is not None:
            predicted.append(task.predict_values(out.logits[batch.loss_mask]).double().cpu())
            true.append(batch.values[batch.loss_mask].double().cpu())
        for k, v in memory_metrics(out.stats, batch).items():
            mem.setdefault(k, []).append(v)
    model.train(was_training)
    result = {"loss": total / count, "accuracy": correct / count, "bits_per_token": total / count / math.log(2),
              "exact_match": exact / rows}
    if sliced["recall"][1] + sliced["rest"][1]:
        result["recall_share"] = sliced["recall"][1] / count
        result.update({f"bits_per_token_{name}": nats / n / math.log(2) for name, (nats, n) in sliced.items() if n})
        result["bits_per_token_by_segment"] = [nats / n / math.log(2) if n else None for nats, n in by_segment]
    if predicted:
        result.update(regression_metrics(torch.cat(predicted), torch.cat(true)))
    result.update({k: sum(v) / len(v) for k, v in mem.items() if v and all(math.isfinite(x) for x in v)})
    return result


def regression_metrics(predicted: Tensor, true: Tensor) -> dict[str, float]:
    """Mean absolute error and the coefficient of determination R^2 = 1 - SS_res / SS_tot."""
    ss_tot = float(((true - true.mean()) ** 2).sum())
    ss_res = float(((true - predicted) ** 2).sum())
    return {"mae": float((predicted - true).abs().mean()), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")}


@dataclass
class Trainer:
    """State of one run; ``fit()`` trains, evaluates and writes the run folder."""

    exp: ExperimentConfig
    run_dir: Path
    model: nn.Module
    task: Task
    device: torch.device
    world: dist.World = field(default_factory=dist.World)
    lock: run.RunLock | None = None
    """The run folder's lock (rank 0), held from ``create`` until ``fit`` ends."""

    @classmethod
    def create(cls, exp: ExperimentConfig) -> Trainer:
        exp = exp.resolved()
        tc = exp.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        device = resolve_device(tc.device)
        world = dist.init(device.type)  # under torchrun: join the other ranks; else a world of one
        if world.distributed and device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
        default = f"{exp.arch}-{exp.task.name}"
        run_dir, lock = None, None
        if world.main:  # rank 0 owns the run folder; the others learn its path from it
            run_dir, lock = run.make_run_dir(tc.out_dir, tc.name, default, tc.resume, log=_note)
        try:
            if world.main:
                if tc.resume:
                    _check_resumable(run_dir, exp)
                print(f"run folder: {run_dir}" + ("" if tc.resume else f"  (continue it with --train.name "
                      f"{run_dir.name} --train.resume)"), file=sys.stderr, flush=True)
            run_dir = Path(dist.broadcast(str(run_dir), world))
            seed_everything(tc.seed)  # every rank: the same initial weights and noise streams
            model, task = build(exp)
            if world.main:
                run.write_command(run_dir)
                with writing(run_dir / "config.yaml"):
                    exp.to_yaml(run_dir / "config.yaml")
                with writing(run_dir / "env.json"):
                    (run_dir / "env.json").write_text(json.dumps({**run.environment(device),
                                                                  "world_size": world.size}, indent=1))
            model = model.to(device)
            if tc.compile:
                model.compile()  # compiles forward in place: forward_sequence's self(...) calls run compiled
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return cls(exp, run_dir, model, task, device, world, lock)

    def fit(self) -> dict[str, Any]:
        """Train to train.steps (or the time budget), evaluating and checkpointing on the way;
        results.json's content. The run folder's lock is released when it returns or raises."""
        try:
            return self._fit()
        finally:
            self.release()

    def release(self) -> None:
        """Give up the run folder's lock (this trainer writes it no more)."""
        if self.lock is not None:
            self.lock.release()

    def _fit(self) -> dict[str, Any]:
        exp, tc, task, model = self.exp, self.exp.train, self.task, self.model
        opt = build_optimizer(model, tc)
        sched = build_scheduler(opt, tc)
        world = self.world
        logger = run.DiskLogger(self.run_dir / "metrics.jsonl") if world.main else _NoLogger()
        self.step_model = dist.ddp(model, self.device) if world.distributed else None
        seg = exp.segment_len()
        test = task.test_set(tc.eval_batches, tc.batch_size)
        key = task.metric
        higher = key not in LOWER_IS_BETTER  # classification: accuracy (or exact match) up; LM: bits down
        step, best, elapsed, skipped = 0, None, 0.0, 0
        if tc.resume:
            if not world.main:
                dist.barrier(world)  # rank 0 loads first: recovering a torn checkpoint may rename files
            meta, rng = checkpoint.load_checkpoint(self.run_dir / "ckpt" / "last", model, opt, sched)
            step, best, elapsed = meta["step"], meta.get("best"), meta.get("elapsed", 0.0)
            skipped = meta.get("skipped", 0)
            set_rng_state(rng)  # rank 0's, which every rank had: same seed, same draws
            if world.main:
                run.truncate_metrics(self.run_dir, step)  # records past the checkpoint are redone
                print(f"resuming {self.run_dir} from step {step} of {tc.steps} (ckpt/last)", file=sys.stderr)
                dist.barrier(world)
        progress = Progress(tc.steps, step, tc.progress and world.main, key, elapsed=elapsed)
        start, tokens, t_log = time.time() - elapsed, 0, time.time()
        model.train()
        last_eval: dict[str, float] = {}
        while step < tc.steps:
            host = dist.shard_batch(task.batch("train", step, tc.batch_size), world)
            scored, batch = host_checks(model, host), host.to(self.device)
            loss, right, n, out, fault = self._step(step, batch, seg, opt, sched, scored)
            if fault:
                skipped += 1
                progress.note(f"skipped step {step + 1}: {fault}")
            step += 1
            tokens += batch.tokens.numel() * world.size
            out_of_time = bool(tc.time_budget_s) and time.time() - start > tc.time_budget_s
            if tc.time_budget_s and world.distributed:  # every rank stops at the same step
                out_of_time = bool(dist.all_sum(torch.tensor([float(out_of_time)]), world) > 0)
            evaluate_now = step % tc.eval_every == 0 or step == tc.steps or out_of_time
            if step % tc.log_every == 0 or step == tc.steps or out_of_time:
                now = time.time()
                loss_all, acc = dist.global_loss(loss, right, n, world)
                rec = {"step": step, "split": "train", "loss": loss_all, "accuracy": acc,
                       "lr": sched.get_last_lr()[0], "tokens_per_s": tokens / max(now - t_log, 1e-9),
                       "elapsed": now - start, **dist.mean_over_ranks(_extras(out, batch, skipped), world)}
                logger.log(rec)
                tokens, t_log = 0, now
                progress.update(step, rec, last_eval)
            if evaluate_now and world.main:  # the others go on; DDP's next all-reduce waits for rank 0
                last_eval = evaluate(model, test, seg, self.device, task)
                logger.log({"step": step, "split": "test", "elapsed": time.time() - start, **last_eval})
                score = last_eval[key] if higher else -last_eval[key]
                if best is None or score > best:
                    best = score
                    checkpoint.save_checkpoint(self.run_dir / "ckpt" / "best", model,
                                               meta={"step": step, key: last_eval[key]})
                progress.evaluated(step, last_eval)
            if world.main and (evaluate_now or (tc.ckpt_every and step % tc.ckpt_every == 0)):
                checkpoint.save_checkpoint(self.run_dir / "ckpt" / "last", model, opt, sched, rng_state(),
                                           meta={"step": step, "best": best, "elapsed": time.time() - start,
                                                 **({"skipped": skipped} if skipped else {})},
                                           keep=tc.keep_last)
            if out_of_time:
                break
        progress.close()
        if not world.main:
            dist.barrier(world)  # rank 0 writes results.json; return once it has
            return {}
        if not last_eval:  # resumed a run killed after its last checkpoint, before results.json
            last_eval = evaluate(model, test, seg, self.device, task)
        results = self._finish(step, time.time() - start, last_eval)
        dist.barrier(world)
        return results

    def _step(self, step: int, batch: Batch, seg: int, opt: torch.optim.Optimizer, sched: Any,
              scored: int | None = None) -> tuple[Tensor, Tensor | int, int, Any, str | None]:
        """One optimiser step on ``batch``: (task loss, correct, scored, output, fault). A NaN or inf
        in the loss, the state or a gradient raises FloatingPointError naming the step and the
        layer, before any weight changes; with train.nonfinite='skip' the step is skipped instead
        (the schedule still advances: batch i stays step i) and ``fault`` says why.

        scored: ``host_checks`` of the batch before it moved to the device (None: made here, on
        ``batch``). In one process a step then makes one host sync, the fault check
        (``nonfinite_step``); the loss and accuracy stay on the device until a log step reads them.
        Under DDP the fault flag is all-reduced, before backward (every rank runs it or none) and
        after."""
        model, tc, world = self.model, self.exp.train, self.world
        n = host_checks(model, batch) if scored is None else scored
        out, loss, right = None, torch.tensor(float("nan")), 0
        forward = self.step_model if getattr(self, "step_model", None) is not None else model.forward_sequence
        fault: str | None = None
        try:
            with self._autocast():
                out = forward(batch.tokens, seg, **forward_kwargs(model, batch, n))
        except NonFiniteState as e:  # a segment made a state that the next one refuses
            fault = f"non-finite forward at step {step + 1}: {e}; {nonfinite_weight(model)}"
        else:
            loss, right, n = task_loss(out.logits, batch, n)
        if world.distributed:  # all ranks run backward (DDP's all-reduce) or none does
            fault = dist.any_fault(fault, step + 1, world)
        if out is not None and fault is None:
            # the gradient of the global batch: each rank's mean over its n scored positions, scaled
            # by n / (global n / world); DDP then averages over ranks
            task = loss
            if world.distributed:
                task = loss * (n * world.size / float(dist.all_sum(torch.tensor([float(n)]), world)))
            opt.zero_grad(set_to_none=True)
            Objective.total(task, out.losses).backward()  # the task loss plus the weighted aux and teacher
            norm = nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip else grad_norm(model)
            fault = nonfinite_step(model, step + 1, loss, out, norm)
            if world.distributed:  # a fault of one rank's forward stops every rank's step
                fault = dist.any_fault(fault, step + 1, world)
        if fault is not None and tc.nonfinite == "stop":
            last = self.run_dir / "ckpt" / "last"
            kept = (f"The last good checkpoint is intact in {last} (--train.resume continues from it)"
                    if checkpoint.resumable(last) else
                    f"No checkpoint was written before it (the same command starts the run afresh in "
                    f"{self.run_dir})")
            raise FloatingPointError(f"{fault}. {kept}; lower train.lr, raise train.grad_clip, or set "
                                     "train.nonfinite=skip")
        if fault is None:
            opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return loss, right, n, out, fault

    def _autocast(self) -> contextlib.AbstractContextManager:
        """torch.autocast in train.autocast's dtype for the forward pass, or nothing."""
        if self.exp.train.autocast == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _finish(self, step: int, wall: float, final: dict[str, float]) -> dict[str, Any]:
        logged = run.read_metrics(self.run_dir)
        records = [r for r in logged if r.get("split") == "train"]
        key = self.task.metric
        speeds = [r["tokens_per_s"] for r in records[1:]] or [r["tokens_per_s"] for r in records]
        peak = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        results = {"arch": self.exp.arch, "task": self.exp.task.name, "steps": step, "wall_s": wall,
                   "params": params(self.model), "train_only_params": train_only_params(self.model),
                   "state_floats": self.model.state_size(seq_len=self.task.seq_len), "chance": self.task.chance,
                   "metric": key,
                   "train_tokens_per_s": sum(speeds) / max(len(speeds), 1), "peak_mem_mb": peak,
                   "test": final,
                   # the test metric at every evaluation, so plots need no metrics.jsonl
                   "curve": [[r["step"], r[key]] for r in logged if r.get("split") == "test" and key in r]}
        with writing(self.run_dir / "results.json"):
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=1))
        return results


class _NoLogger:
    """The logger of ranks other than 0: rank 0 writes the (already reduced) records."""

    def log(self, record: dict[str, Any]) -> None:
        pass


def _extras(out: Any, batch: Batch, skipped: int) -> dict[str, float]:
    """A train record's aux losses and memory diagnostics (none for a step skipped in forward)."""
    if out is None:
        return {"skipped": skipped}
    return {**{f"aux/{k}": float(v.detach()) for k, v in out.losses.items()}, **memory_metrics(out.stats, batch),
            **({"skipped": skipped} if skipped else {})}


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    last = checkpoint.recover(run_dir / "ckpt" / "last", log=lambda msg: print(msg, file=sys.stderr))
    step = checkpoint.resume_meta(last)["step"]
    # step == steps without results.json: killed after the last checkpoint, resume only finishes it
    if step > exp.train.steps or (step == exp.train.steps and (run_dir / "results.json").exists()):
        raise ValueError(f"{run_dir} already finished {step} of train.steps={exp.train.steps}; "
                         "raise train.steps to train it further")


def train(exp: ExperimentConfig) -> dict[str, Any]:
    """Train ``exp`` end to end; returns results.json's content (the run folder is in 'run_dir')."""
    trainer = Trainer.create(exp)
    try:
        results = trainer.fit()
    finally:
        dist.close(trainer.world)
    results["run_dir"] = str(trainer.run_dir)
    return results  # {} but the run folder on ranks other than 0
