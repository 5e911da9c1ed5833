"""The training objective of a selective memory, in one place: what ``selmem train``, a user's own
loop, Hugging Face ``Trainer`` (``SelmemForCausalLM(labels=...)``) and a ``MemoryStack`` hosted in
another model all optimise (issue 27 item 1).

Legend: B batch, N sequence length, L layers, A scored positions (answers), V vocabulary.

    loss = task + aux
    aux  = lambda_sparse * sparsity + lambda_rec * reconstruction + lambda_nce * infonce
           + lambda_score * score_bound                       (per segment, then averaged)
           + lambda_credit * probe + lambda_read * read + lambda_credit * credit   (per window)

The first line's terms are the memory's self-supervised losses, which the model (or a stack's
layers) reports unweighted per segment; ``Objective.weigh`` weighs them. The second line is head
B's teacher (memory/credit.py), computed once per training window from the model's outputs (head
B's live scores, the write and read stats, the read attention) and the window's scored positions:
``Objective.teacher``. ``Objective.total`` adds ``aux`` to the task loss. The weights and the
teacher's options are ``ObjectiveConfig``'s fields (config.py), a SelmemConfig's ``objective``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from selmem.config import ObjectiveConfig, SelmemConfig
from selmem.memory import credit

# the self-supervised terms and the config field weighing each, in the order they are summed
WEIGHTS = {"sparsity": "lambda_sparse", "reconstruction": "lambda_rec", "infonce": "lambda_nce",
           "score_bound": "lambda_score"}


class Objective:
    """The weights and the arithmetic of selmem's training loss, from an ObjectiveConfig.

    ``weigh(parts)``: the weighted sum of the self-supervised terms present in ``parts``;
    ``teacher(...)``: the losses with head B's teacher added (``credit`` 'read' or 'probe');
    ``total(task, losses)``: what a training step backpropagates.

    cfg: the objective's config, or a SelmemConfig (its ``objective``, and its ``slots``); slots:
    the memory's slots per layer M, which the read teacher (``lambda_read``) needs."""

    def __init__(self, cfg: ObjectiveConfig | SelmemConfig, slots: int = 0) -> None:
        if isinstance(cfg, SelmemConfig):
            cfg, slots = cfg.objective, cfg.slots
        if not isinstance(cfg, ObjectiveConfig):
            raise TypeError(f"Objective takes an ObjectiveConfig or a SelmemConfig, got {type(cfg).__name__}")
        self.cfg, self.slots = cfg, slots

    @property
    def has_teacher(self) -> bool:
        """Whether head B has a teacher that needs the window's scored positions."""
        return self.cfg.has_teacher

    def weigh(self, parts: dict[str, Tensor]) -> Tensor:
        """sum of lambda_k * parts[k] over the self-supervised terms k in ``parts`` (``WEIGHTS``'
        order; a term a host does not compute, such as a stack's InfoNCE, is left out)."""
        terms = [getattr(self.cfg, w) * parts[k] for k, w in WEIGHTS.items() if k in parts]
        aux = terms[0]
        for t in terms[1:]:
            aux = aux + t
        return aux

    def teacher(self, losses: dict[str, Tensor], scores: list[Tensor], stats: dict[str, Any],
                reads: list[Tensor | None] | None, probe: Any, tokens: Tensor | None, segment_len: int,
                answer_mask: Tensor, answer_targets: Tensor | None = None,
                answer_count: int | None = None) -> dict[str, Tensor]:
        """``losses`` (with 'aux') plus head B's teacher for one window: 'credit' (head B's BCE
        toward its target), with credit='probe' 'probe' (the probe's cross-entropy at the answers)
        and, with lambda_read > 0 and reads, 'read' (the read teacher); 'aux' gains their weighted
        sum. A new dict; ``losses`` is unchanged.

        scores [(B, N)] * L head B's live scores, stats {"segments": [forward's stats, ...]},
        reads [(B, N, M+R) or None] * L or None (no read teacher), probe the RetrievalProbe
        (credit='probe'), tokens (B, N) the window's ids, answer_mask (B, N) bool the scored
        positions, answer_targets (B, N) long their targets, answer_count the number of answers
        if known (no host sync then)."""
        cfg, out = self.cfg, dict(losses)
        if not self.has_teacher:
            return out
        if answer_mask.shape != scores[0].shape:
            raise ValueError(f"answer_mask has shape {tuple(answer_mask.shape)}, tokens {tuple(scores[0].shape)}")
        if cfg.credit == "probe" and tokens is None:
            raise ValueError("credit='probe': head B's teacher embeds the token ids itself, so it needs tokens, "
                             "not inputs_embeds (or pass no answer_mask)")
        if cfg.credit == "read":
            answers = int(answer_mask.sum()) if answer_count is None else answer_count
            c = credit.credit_loss(scores, credit.read_credit(stats, answer_mask), answers)
        else:
            if answer_targets is None or answer_targets.shape != tokens.shape:
                raise ValueError("credit='probe' needs answer_targets (B, N), the targets at the answer positions")
            out["probe"], c, attn = credit.probe_losses(probe, tokens, scores, segment_len, answer_mask,
                                                        answer_targets, answer_count, cfg.probe_target)
            out["aux"] = out["aux"] + cfg.lambda_credit * out["probe"]
            if cfg.lambda_read > 0 and reads is not None and reads[0] is not None:
                if self.slots < 1:
                    raise ValueError("the read teacher (lambda_read > 0) needs the memory's slots: "
                                     "Objective(objective_cfg, slots=M), or Objective(selmem_cfg)")
                row, pos = credit.answer_positions(answer_mask, answer_count)
                out["read"] = credit.read_teacher_loss(stats, reads, attn, row, pos, segment_len, self.slots,
                                                        top1=cfg.read_target == "top1",
                                                        mass_term=cfg.read_mass)
                out["aux"] = out["aux"] + cfg.lambda_read * out["read"]
        out["credit"] = c
        out["aux"] = out["aux"] + cfg.lambda_credit * c
        return out

    @staticmethod
    def total(task: Tensor, losses: dict[str, Tensor]) -> Tensor:
        """The loss a training step backpropagates: the task loss plus ``losses['aux']``."""
        return task + losses["aux"]
