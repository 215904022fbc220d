"""Routers and load-balance losses of the Yi-Lightning MoE.

Routing: `route_topk` (fixed k) and `route_top_p` (dynamic top-p: the fewest experts whose
probabilities sum to >= p, clamped to [min_k, max_k], as in "Harder Tasks Need More Experts").
Both return `topk_idx_TK` (int64, -1 marks an unused slot) and `topk_w_TK` (float32), the format of
`alignment.kernels.moe_experts`.

Balance losses (the report: a_ST*L_ST + a_EP*L_EP + a_PEP*L_PEP, a = 1e-6, 1e-4, 1e-3) are one
formula applied at three granularities; see `balance_loss`. `routing_stats` gives per-layer numbers
for logging. Tests: `python -m pytest -q tests/model/test_routing.py`.

Shape legend: T tokens, E experts, K routing slots per token, G groups of experts.
"""

from __future__ import annotations

import torch


def route_topk(probs_TE: torch.Tensor, k: int, norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most probable experts per token; weights renormalised to sum 1 when `norm`."""
    w_TK, idx_TK = probs_TE.topk(k, dim=-1)
    if norm:
        w_TK = w_TK / w_TK.sum(-1, keepdim=True).clamp_min(1e-20)
    return idx_TK, w_TK.float()


def route_top_p(
    probs_TE: torch.Tensor, p: float, min_k: int, max_k: int, norm: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic top-p: per token, the fewest experts (by descending probability) whose mass reaches `p`.

    n_t = #{j : mass of the experts ranked before j < p}, then clamped to [min_k, max_k]. Slots past
    n_t hold expert -1 with weight 0, so the result is always [T, max_k].
    """
    w_TK, idx_TK = probs_TE.topk(max_k, dim=-1)
    mass_before_TK = w_TK.cumsum(-1) - w_TK
    n_T = (mass_before_TK < p).sum(-1).clamp(min_k, max_k)
    keep_TK = torch.arange(max_k, device=probs_TE.device)[None, :] < n_T[:, None]
    w_TK = w_TK * keep_TK
    if norm:
        w_TK = w_TK / w_TK.sum(-1, keepdim=True).clamp_min(1e-20)
    idx_TK = torch.where(keep_TK, idx_TK, torch.full_like(idx_TK, -1))
    return idx_TK, w_TK.float()


def expert_load(idx_TK: torch.Tensor, num_experts: int, token_mask_T: torch.Tensor | None = None) -> torch.Tensor:
    """Number of (token, slot) assignments per expert, float [E]; unused slots and masked tokens excluded."""
    valid_TK = idx_TK >= 0
    if token_mask_T is not None:
        valid_TK = valid_TK & token_mask_T[:, None].bool()
    counts = torch.zeros(num_experts, dtype=torch.float32, device=idx_TK.device)
    return counts.scatter_add_(0, idx_TK.clamp_min(0).reshape(-1), valid_TK.reshape(-1).float())


def balance_loss(
    probs_TE: torch.Tensor, idx_TK: torch.Tensor, num_groups: int, token_mask_T: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Switch-Transformer balance loss over `num_groups` equal, contiguous groups of experts.

        L = G * sum_g f_g * P_g
        f_g = (assignments to experts of group g) / (all assignments)      (no gradient: counts)
        P_g = mean over tokens of sum_{i in g} p_ti                         (differentiable)

    With G = E (one expert per group) this is L_ST = N * sum_i f_i * P_i (Switch Transformer,
    normalised by assignments so top-k and dynamic top-p both give 1.0 at perfect balance). With
    G = ep_groups it is L_EP (balance across expert-parallel devices: DeepSeekMoE's device-level
    loss); with G = ep_groups * pep_partitions it is L_PEP (our reading of the report's partition
    loss: the same balance one level finer, over the partitions inside each device group, which
    evens out all-to-all traffic). Minimum 1.0 at a uniform load; up to G when one group takes all.
    """
    E = probs_TE.shape[-1]
    if E % num_groups:
        raise ValueError(f"{E} experts do not split into {num_groups} equal groups")
    load_E = expert_load(idx_TK, E, token_mask_T)
    if token_mask_T is None:
        mean_p_E = probs_TE.float().mean(0)
    else:
        m = token_mask_T.float()
        mean_p_E = (probs_TE.float() * m[:, None]).sum(0) / m.sum().clamp_min(1.0)
    f_G = load_E.view(num_groups, -1).sum(-1) / load_E.sum().clamp_min(1.0)
    P_G = mean_p_E.view(num_groups, -1).sum(-1)
    return num_groups * (f_G * P_G).sum()


def aux_losses(
    probs_TE: torch.Tensor, idx_TK: torch.Tensor, ep_groups: int, pep_partitions: int,
    token_mask_T: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The three unweighted balance losses of one layer: `switch` (per expert), `ep`, `pep`."""
    E = probs_TE.shape[-1]
    return {
        "switch": balance_loss(probs_TE, idx_TK, E, token_mask_T),
        "ep": balance_loss(probs_TE, idx_TK, ep_groups, token_mask_T),
        "pep": balance_loss(probs_TE, idx_TK, ep_groups * pep_partitions, token_mask_T),
    }


@torch.no_grad()
def routing_stats(
    probs_TE: torch.Tensor, idx_TK: torch.Tensor, token_mask_T: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Logging numbers of one layer: tokens per expert [E], mean experts per token, mean router entropy."""
    E = probs_TE.shape[-1]
    m = torch.ones(probs_TE.shape[0], device=probs_TE.device) if token_mask_T is None else token_mask_T.float()
    n = m.sum().clamp_min(1.0)
    p = probs_TE.float()
    entropy_T = -(p * p.clamp_min(1e-20).log()).sum(-1)
    return {
        "tokens_per_expert": expert_load(idx_TK, E, token_mask_T),
        "experts_per_token": ((idx_TK >= 0).float().sum(-1) * m).sum() / n,
        "entropy": (entropy_T * m).sum() / n,
    }
