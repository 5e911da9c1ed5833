"""Credit from the read: which tokens did the answers need? Two teachers for head B.

- ``credit='read'``: which written tokens did the memory's own reads at the answers use
  (``read_credit``, ``credit_loss``);
- ``credit='probe'``: which earlier tokens does a train-time attention probe over the whole
  training window retrieve at the answers (``RetrievalProbe``, ``probe_losses``).


Legend: B batch, N sequence length, T segment length, C candidates, M slots per layer.

Read credit. Head B's only gradient used to come through the content it wrote, a long and noisy path (the
write, every later overwrite, the read at an answer many segments on). This module gives it a
second, direct signal, computed after a training sequence from the memory's own bookkeeping:

    credit_t = sum over later segments s, slots j of  share_tj(s) * n_s * (r_ans_j(s) - r_rest_j(s))

- share_tj(s): candidate t's share of slot j's content when segment s reads it, its ``contrib``
  after its own segment's writes times the ``kept`` of every segment since (update.py);
- r_ans_j(s), r_rest_j(s): the mean read attention on slot j over the answer positions of
  segment s (the scored tokens, ``loss_mask``) and over its other tokens; n_s = answers in s.

So a token earns credit when the slot that holds it is read *more at answers than elsewhere*:
a slot every token reads alike (diffuse attention, an early model) earns nothing, however much
of it survives. ``credit_loss`` turns the credit into a weighted binary cross-entropy on head B's
scores: target 1 where credit > 0, 0 where < 0, weight |credit|, normalised by the number of
answers (so the loss grows as the reads at answers become decisive). Computed from detached
stats: the credit is a target, not a path for gradients. Tokens never written (share 0) or never
read afterwards get no loss; what head B never writes it cannot learn about, so exploration
comes from its initial write rate and the sparsity target.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selmem.config import SelmemConfig
from selmem.layers import MLP, Block, RMSNorm, ShortConv


def read_credit(stats: dict[str, Any], answer_mask: Tensor) -> list[Tensor]:
    """forward_sequence stats + answer_mask (B, N) bool -> per layer credit (B, N) per input position."""
    segs = stats["segments"]
    B, N = answer_mask.shape
    L = len(segs[0]["layers"]) if segs else 0
    out = []
    for l in range(L):
        credit = torch.zeros(B, N, dtype=torch.float32, device=answer_mask.device)
        live: list[tuple[Tensor, Tensor]] = []  # (positions (B, C), share (B, C, M)) written so far
        for seg in segs:
            lay = seg["layers"][l]
            read = lay.get("read")
            if read is not None and live:
                M = live[0][1].shape[-1]
                T = read.shape[1]
                pos = seg["start"][:, None] + torch.arange(T, device=read.device)  # (B, T)
                ans = answer_mask.gather(1, pos.clamp(max=N - 1)) & (pos < N)  # (B, T)
                r = read[..., :M].float()  # (B, T, M) own slots, not hints
                n_ans = ans.sum(1, keepdim=True).float()  # (B, 1)
                n_rest = (~ans).sum(1, keepdim=True).float()
                r_ans = (r * ans[..., None]).sum(1) / n_ans.clamp_min(1)
                r_rest = (r * (~ans)[..., None]).sum(1) / n_rest.clamp_min(1)
                adv = (r_ans - r_rest) * n_ans  # (B, M): zero in a segment without answers
                for p, share in live:
                    credit.scatter_add_(1, p, (share.float() * adv[:, None, :]).sum(-1))
            live = [(p, share * lay["kept"][:, None, :]) for p, share in live]
            live.append((lay["cand_pos"], lay["contrib"]))
        out.append(credit)
    return out


def credit_loss(scores: list[Tensor], credit: list[Tensor], answers: int) -> Tensor:
    """Weighted BCE of head B's scores (per layer (B, N), live) toward sign(credit), weight
    |credit|, summed and divided by ``answers`` (scored tokens in the batch); mean over layers."""
    terms = []
    for s, c in zip(scores, credit, strict=True):
        target = (c > 0).to(s.dtype)
        bce = F.binary_cross_entropy_with_logits(s, target, weight=c.abs().to(s.dtype), reduction="sum")
        terms.append(bce / max(answers, 1))
    return torch.stack(terms).mean()


class RetrievalProbe(nn.Module):
    """A train-time teacher for head B: a small full-attention Transformer over the whole
    training window, whose last attention may only look at earlier segments (exactly what the
    memory must carry).

    Its own embedding, ``probe_layers`` causal blocks (with the short convolution that binds a key
    to its value, as every model here has) for the queries, then one multi-head retrieval
    attention over earlier segments plus a learned null entry (nothing in the past helps), whose
    keys and values are local (a token's short-conv window and an MLP); logits = W_o(o + x)
    answer the scored positions (cross-entropy on the task's targets). It is the `full` baseline in
    miniature, so it finds *where the answers are* about as fast as full attention does (about
    300 steps on configs/cpu.yaml). Its retrieval attention at the answers, mean over heads, is
    head B's target: y_t = min(1, sum over answers q of attn[q, t]): a token is worth caching
    when a later answer retrieves it. The probe reads tokens, not the model's features, and is
    never used by ``forward``: inference memory stays constant and the forward pass unchanged.
    It costs a full-attention pass over the training window, at training time only.
    """

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        d, H = cfg.d_model, cfg.n_heads
        self.n_heads = H
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(d, H, cfg.mlp_ratio, layer_idx=i, prefix=False,
                                          conv_kernel=cfg.short_conv) for i in range(cfg.objective.probe_layers))
        # keys and values see only a token's short-conv window: see forward
        self.local_conv = ShortConv(d, max(cfg.short_conv, 1))
        self.local_norm0, self.local_norm1 = RMSNorm(d), RMSNorm(d)
        self.local_mlp = MLP(d, cfg.mlp_ratio * d)
        self.norm, self.local_norm = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.null = nn.Parameter(torch.zeros(2, d))  # key/value to attend to when nothing helps
        self.out = nn.Linear(d, cfg.vocab_size, bias=False)
        self.window = cfg.objective.probe_window

    def forward(self, tokens: Tensor, segment_len: int, answers: Tensor,
                count: int | None = None, with_null: bool = False) -> tuple[Tensor, Tensor]:
        """tokens (B, N), answers (B, N) bool -> logits (A, V) at the A answer positions (row-major
        order, as ``x[answers]``) and retrieval attention (A, N) of each answer on every token of
        an earlier segment (with_null: (A, 1+N), the null entry first). Only the answers query the
        past: the other rows would cost N^2 and teach nothing. count: A, if the caller knows it
        (see ``answer_positions``)."""
        B, N = tokens.shape
        e = self.embed(tokens)
        h = e
        for block in self.blocks:
            h, _ = block(h)  # causal over the whole window, rotary positions 0..N-1
        # Keys and values are *local*: a token's own short-conv window, never what the causal
        # blocks moved into it from far away. Otherwise the retrieval may pick any later token
        # that gathered the pair (measured: a seed whose probe answered perfectly from tokens
        # 5-16 places after the pair, a target head B could not follow). With local keys the
        # credit lands on the token whose neighbourhood holds what the answer needs.
        loc = e + self.local_conv(self.local_norm0(e))
        loc = self.local_norm(loc + self.local_mlp(self.local_norm1(loc)))
        d = h.shape[-1]
        H, D = self.n_heads, d // self.n_heads
        x = self.norm(h)
        q = self.q(x)
        k, v = self.kv(loc).chunk(2, dim=-1)
        row, pos = answer_positions(answers, count)  # (A,) each
        q = q.view(B, N, H, D).transpose(1, 2)  # (B, H, N, D)
        k = torch.cat([self.null[:1].expand(B, 1, d), k], dim=1).view(B, N + 1, H, D).transpose(1, 2)
        v = torch.cat([self.null[1:].expand(B, 1, d), v], dim=1).view(B, N + 1, H, D).transpose(1, 2)
        if self.window:
            o, mean = self._windowed(q, k, v, row, pos, segment_len)
        else:
            scores = (q @ k.transpose(-1, -2))[row, :, pos] / math.sqrt(D)  # (A, H, 1+N): one batched matmul
            seg = torch.arange(N, device=tokens.device) // segment_len
            allowed = torch.cat([torch.ones_like(pos)[:, None].bool(),
                                 seg[None, :] < (pos // segment_len)[:, None]], dim=1)  # (A, 1+N)
            attn = scores.masked_fill(~allowed[:, None, :], float("-inf")).softmax(-1)  # (A, H, 1+N)
            full = attn.new_zeros(B, N, H, N + 1).index_put((row, pos), attn)  # answers' rows, zeros elsewhere
            o = (full.transpose(1, 2) @ v).transpose(1, 2)[row, pos].reshape(-1, d)  # (A, d)
            mean = attn.mean(1)
        return self.out(o + x[row, pos]), (mean if with_null else mean[:, 1:])

    def _windowed(self, q: Tensor, k: Tensor, v: Tensor, row: Tensor, pos: Tensor,
                  segment_len: int) -> tuple[Tensor, Tensor]:
        """The retrieval attention of an answer in segment s over the null and segments
        s - window .. s - 1 only (``probe_window``), one segment of queries at a time: cost
        B*N*(window*T) instead of B*N*N. q (B, H, N, D), k/v (B, H, 1+N, D) (null first) ->
        o (A, d) and the mean over heads (A, 1+N), zero outside each answer's window."""
        B, H, N, D = q.shape
        T, W = segment_len, self.window
        o_all = q.new_zeros(B, N, H, D)
        attn_all = q.new_zeros(B, N, 1 + N)
        for s in range(1, -(-N // T)):  # segment 0 has no past: its answers can only take the null
            lo, hi = max(0, s - W) * T, min(s * T, N)
            keys = torch.cat([k[:, :, :1], k[:, :, 1 + lo : 1 + hi]], dim=2)  # (B, H, 1+n, D)
            vals = torch.cat([v[:, :, :1], v[:, :, 1 + lo : 1 + hi]], dim=2)
            qs = q[:, :, s * T : min((s + 1) * T, N)]  # (B, H, t, D)
            a = (qs @ keys.transpose(-1, -2) / math.sqrt(D)).softmax(-1)  # (B, H, t, 1+n)
            o_all[:, s * T : s * T + qs.shape[2]] = (a @ vals).transpose(1, 2)
            m = a.mean(1)  # (B, t, 1+n)
            attn_all[:, s * T : s * T + qs.shape[2], :1] = m[..., :1]
            attn_all[:, s * T : s * T + qs.shape[2], 1 + lo : 1 + hi] = m[..., 1:]
        o_all[:, :T] = v[:, :, :1].transpose(1, 2)  # segment 0's answers: all on the null
        attn_all[:, :T, 0] = 1.0
        return o_all[row, pos].reshape(-1, H * D), attn_all[row, pos]


def answer_positions(mask: Tensor, count: int | None = None) -> tuple[Tensor, Tensor]:
    """(row, pos) (A,) each of the True entries of mask (B, N), row-major as ``mask.nonzero()``.
    A nonzero waits for the device to count them (a host sync); given their ``count`` (the
    trainer counts them on the host before the batch moves) nonzero_static needs no sync."""
    if count is None:
        return mask.nonzero(as_tuple=True)
    flat = torch.nonzero_static(mask.flatten(), size=count).squeeze(1)  # (A,)
    return flat // mask.shape[1], flat % mask.shape[1]


def probe_losses(probe: RetrievalProbe, tokens: Tensor, scores: list[Tensor], segment_len: int,
                 answer_mask: Tensor, answer_targets: Tensor,
                 count: int | None = None, reduce: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """(probe cross-entropy at the answers, head-B BCE toward the probe's credit, the probe's
    retrieval attention (A, N), detached, for the read teacher) for one batch.
    tokens (B, N); scores per layer (B, N); answer_mask (B, N) bool; answer_targets (B, N) long
    (read where answer_mask); count: the number of answers if known (``answer_positions``);
    reduce: the answers' attention on a token summed ('sum', clamped at 1), its largest ('max'),
    or 'max' where more than half of the positions are answers, else 'sum' ('auto'); 'peak': each
    answer's attention divided by its own largest entry, the null one included, then the largest
    over answers (the token an answer retrieves most gets 1, whatever the answer density and
    however the answer's attention is split over a binding's tokens; an answer that retrieves
    nothing, its mass on the null, gives every token little)."""
    logits, attn = probe(tokens, segment_len, answer_mask, count, with_null=True)  # (A, V), (A, 1+N)
    attn = attn.detach()
    row, pos = answer_positions(answer_mask, count)
    ce = F.cross_entropy(logits.float(), answer_targets[row, pos])
    if reduce == "auto":  # row is a host-sized tensor: its length costs no sync
        reduce = "max" if 2 * row.shape[0] > answer_mask.numel() else "sum"
    target = teacher_target(attn, row, scores[0].shape[0], reduce)
    bce = torch.stack([F.binary_cross_entropy_with_logits(s, target.to(s.dtype)) for s in scores]).mean()
    return ce, bce, attn[:, 1:]


def teacher_target(attn: Tensor, row: Tensor, batch: int, reduce: str) -> Tensor:
    """Head B's target (batch, N) from the probe's retrieval attention attn (A, 1+N) at the A
    answers (the null entry first) of rows ``row`` (A,): 'sum', 'max' or 'peak' as in
    ``probe_losses`` (where 'auto' is resolved)."""
    per = attn / attn.amax(-1, keepdim=True).clamp_min(1e-9) if reduce == "peak" else attn
    per = per[:, 1:]
    empty = per.new_zeros(batch, per.shape[1])
    return (empty.index_add(0, row, per).clamp(max=1.0) if reduce == "sum"
            else empty.scatter_reduce(0, row[:, None].expand_as(per), per, "amax"))


def read_teacher_loss(stats: dict[str, Any], reads: list[Tensor], attn: Tensor, row: Tensor, pos: Tensor,
                      segment_len: int, slots: int, top1: bool = False, mass_term: bool = False) -> Tensor:
    """The read teacher: at every answer, a layer's read over its own slots is pulled toward the
    slots that hold what the probe retrieves there (``lambda_read``).

    stats: forward_sequence's (contrib, kept and cand_pos per segment and layer, detached); reads
    per layer (B, N, M+R), live; attn (A, N) the probe's retrieval attention at the A answers
    (row, pos) (A,), on earlier segments only. For answer a in segment s and layer l:

        t_aj = sum over earlier candidates c of  attn[a, pos_c] * share_cj(s)

    with share_cj(s) candidate c's share of slot j when segment s reads it (as in read_credit);
    ``m_a = sum_j t_aj`` is how much of what the probe retrieves the memory still holds. The loss
    is the cross-entropy of t_a / m_a against the read renormalised over the M own slots, weighted
    by min(m_a, 1) and averaged over the answers outside the first segment (top1: of the one-hot of
    argmax_j t_aj instead, ``read_target``). mass_term (``read_mass``): each such answer adds the binary
    cross-entropy of the read's total on the M slots, sum_j r_aj (the rest of a joint softmax is on
    the segment's tokens and the hints), toward min(m_a, 1), unweighted. It teaches the read
    what full attention attends to at an answer (where the fact is), not what it says; the
    gradient reaches the queries, the prefix keys and the slots' content, hence the write."""
    segs = stats["segments"]
    later = (pos >= segment_len).to(attn.dtype)  # answers that may read something written
    terms = []
    for l, read in enumerate(reads):
        r = read[row, pos, :slots]  # (A, M) live
        p = r / r.sum(-1, keepdim=True).clamp_min(1e-9)
        target = attn.new_zeros(r.shape)
        cand_pos: list[Tensor] = []
        shares: list[Tensor] = []
        for s, seg in enumerate(segs):
            lay = seg["layers"][l]
            if shares:
                P = torch.cat(cand_pos, dim=1)  # (B, C_tot) positions written before segment s
                S = torch.cat(shares, dim=1)  # (B, C_tot, M) their shares now
                at = attn.gather(1, P[row].clamp(max=attn.shape[1] - 1))  # (A, C_tot)
                here = (pos // segment_len == s).to(attn.dtype)[:, None]  # (A, 1) answers of segment s
                target = target + here * torch.einsum("ac,acm->am", at, S[row].to(attn.dtype))
            shares = [share * lay["kept"][:, None, :] for share in shares]
            cand_pos.append(lay["cand_pos"])
            shares.append(lay["contrib"])
        mass = target.sum(-1)  # (A,)
        if top1:  # the slot holding most of what the probe retrieves, alone
            ce = -(p.gather(1, target.argmax(-1, keepdim=True))[:, 0] + 1e-9).log()  # (A,)
        else:
            ce = -(target / mass[:, None].clamp_min(1e-9) * (p + 1e-9).log()).sum(-1)  # (A,)
        loss = mass.clamp(max=1.0) * ce
        if mass_term:
            held = r.sum(-1).clamp(1e-6, 1 - 1e-6)  # (A,) the read's attention on the slots, live
            loss = loss + F.binary_cross_entropy(held, mass.clamp(max=1.0).to(held.dtype), reduction="none")
        terms.append((later * loss).sum() / later.sum().clamp_min(1.0))
    return torch.stack(terms).mean()
