"""`armt`: Associative Recurrent Memory Transformer (Rodkin et al. 2024, arXiv:2407.04841),
the strongest published per-layer memory, DESIGN §5.

Legend: L layers, B batch, T segment length, M memory tokens, d model width, r key width before
the feature map, F = d_mem feature (key) width of the associative matrix.

Per layer l, a segment [tokens (T) ; memory tokens (M)] flows through the causal block, and the
layer keeps an associative matrix A_l (F x d) with a normaliser z_l (F):

    read,  every position, before the block:   x <- x + phi(q)^T A / (z . phi(q) + eps),
                                                q = W_q x
    write, after the block, at the M memory tokens m (the block's outputs there):
        k = phi(W_k m), v = W_v m, beta = sigmoid(W_b m)            per memory token
        v_old = k^T A / (z . k + eps)                                what A recalls for k
        A <- A + sum_j beta_j k_j (v_j - v_old_j)^T                  delta rule
        z <- z + sum_j gamma_j k_j,  gamma_j = clip(1 - z . k_j, 0, 1), no gradient

phi is DPFP (Schlag et al. 2021) followed by L2 normalisation, as in the authors' code
(modeling_amt/language_modeling.py of RodkinIvan/associative-recurrent-memory-transformer).
gamma is their "correction": z grows only by the part of a key not yet covered (||phi(k)|| = 1).
The memory tokens are learned and fresh in every segment; only A and z are carried, with
gradients through them across segments (BPTT). Two choices of ours, for training from scratch
rather than from a pretrained model: an RMSNorm in front of the memory projections (the residual
stream of a pre-norm Transformer is unnormalised), and W_v keeps its default init (the authors
zero it so a pretrained model starts unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selmem.baselines.attention import causal_mask
from selmem.baselines.base import BaselineState, TransformerLM, zero_position
from selmem.config import SelmemConfig
from selmem.layers import RMSNorm

EPS = 1e-5  # the denominators' epsilon, as in the authors' code


def dpfp_nu(d_mem: int) -> int:
    """DPFP's nu: the largest of 3 (the paper's), 2, 1 such that the feature width 2 * nu * r is
    exactly d_mem and the key width r = d_mem / (2 nu) exceeds both nu and 2. Why: the roll by r
    multiplies relu(x) with relu(-x), always 0, and with r = 2 phi(k) is one-hot, so after the
    normalisation no gradient reaches W_k or W_q."""
    for nu in (3, 2, 1):
        r, rest = divmod(d_mem, 2 * nu)
        if rest == 0 and r > max(nu, 2):
            return nu
    raise ValueError(f"armt needs an even d_mem >= 6 (the DPFP feature width), got {d_mem}")


def dpfp(x: Tensor, nu: int) -> Tensor:
    """Deterministic parameter-free projection: x (..., r) -> (..., 2 * nu * r), non-negative."""
    x = torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # (..., 2r)
    rolled = torch.cat([x.roll(shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    return torch.cat([x] * nu, dim=-1) * rolled


class AssociativeMemory(nn.Module):
    """One layer's associative read and delta-rule write (see the module docstring)."""

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.nu = dpfp_nu(cfg.d_mem)
        r = cfg.d_mem // (2 * self.nu)
        self.read_norm, self.write_norm = RMSNorm(d), RMSNorm(d)
        self.q, self.k = nn.Linear(d, r, bias=False), nn.Linear(d, r, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.beta = nn.Linear(d, 1)  # write strength per memory token

    def phi(self, x: Tensor) -> Tensor:
        return F.normalize(dpfp(x, self.nu), dim=-1)  # (..., F), unit norm

    def read(self, x: Tensor, A: Tensor, z: Tensor) -> Tensor:
        """x (B, n, d), A (B, F, d), z (B, F) -> what the memory returns for x, (B, n, d)."""
        q = self.phi(self.q(self.read_norm(x)))  # (B, n, F)
        return (q @ A) / ((q @ z.unsqueeze(-1)) + EPS)

    def write(self, m: Tensor, A: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """m (B, M, d) memory-token outputs -> updated A (B, F, d), z (B, F)."""
        m = self.write_norm(m)
        k = self.phi(self.k(m))  # (B, M, F)
        v = self.v(m)  # (B, M, d)
        beta = torch.sigmoid(self.beta(m))  # (B, M, 1)
        cover = k @ z.unsqueeze(-1)  # (B, M, 1): how much of k is already stored
        v_old = (k @ A) / (cover + EPS)  # (B, M, d)
        A = A + k.transpose(1, 2) @ (beta * (v - v_old))  # delta rule
        gamma = (1 - cover).clamp(0, 1).detach()  # ||k|| = 1
        return A, z + (gamma * k).sum(1)


@dataclass
class ARMTState(BaselineState):
    """assoc: (L, B, F, d) associative matrices A; normaliser: (L, B, F) normalisers z."""

    assoc: Tensor
    normaliser: Tensor


class AssociativeRecurrentMemoryTransformer(TransformerLM):
    """ARMT. Uses vocab_size, d_model, n_layers, n_heads, mlp_ratio, short_conv (over
    [segment ; memory tokens]), max_segment_len; memory tokens M = ``slots`` (learned, not
    carried); the associative matrix of each layer is
    d_mem x d_model (d_mem = DPFP feature width, even and >= 6; see ``dpfp_nu``). Carries
    n_layers * (d_mem * d_model + d_mem) floats."""

    arch = "armt"
    state_knob = "d_mem"
    state_type = ARMTState

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__(cfg)
        self.memory = nn.ModuleList(AssociativeMemory(cfg) for _ in range(cfg.n_layers))
        # learned memory tokens, fresh in every segment; unit scale, like token embeddings
        self.mem_tokens = nn.Parameter(torch.randn(cfg.slots, cfg.d_model))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> ARMTState:
        cfg, like = self.cfg, self._like()
        like["device"] = device or like["device"]
        L, Fw, d = cfg.n_layers, cfg.d_mem, cfg.d_model
        return ARMTState(position=zero_position(batch_size, like["device"]),
                         assoc=torch.zeros(L, batch_size, Fw, d, **like),
                         normaliser=torch.zeros(L, batch_size, Fw, **like))

    @staticmethod
    def state_floats(cfg: SelmemConfig, seq_len: int | None = None) -> int:
        return cfg.n_layers * (cfg.d_mem * cfg.d_model + cfg.d_mem)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int | None, ...]]:
        L, Fw, d = self.cfg.n_layers, self.cfg.d_mem, self.cfg.d_model
        return {"assoc": (L, batch_size, Fw, d), "normaliser": (L, batch_size, Fw)}

    def step(self, tokens: Tensor, state: ARMTState) -> tuple[Tensor, ARMTState]:
        B, T = tokens.shape
        M = self.cfg.slots
        mem = self.mem_tokens.unsqueeze(0).expand(B, -1, -1)  # (B, M, d)
        x = torch.cat([self.embed(tokens), mem], dim=1)  # (B, T+M, d)
        mask = causal_mask(T + M, device=tokens.device)  # tokens never see the memory tokens
        assoc, normaliser = [], []
        for l, block in enumerate(self.blocks):
            A, z = state.assoc[l], state.normaliser[l]
            x = x + self.memory[l].read(x, A, z)  # memory of earlier segments only
            x, _ = block(x, mask)  # rotary positions 0..T+M-1
            A, z = self.memory[l].write(x[:, T:], A, z)
            assoc.append(A)
            normaliser.append(z)
        new = ARMTState(position=state.position + T, assoc=torch.stack(assoc),
                        normaliser=torch.stack(normaliser))
        return self.head(self.norm(x[:, :T])), new
