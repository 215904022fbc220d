"""Shared loss math for SFT, reward-model and DPO training: pure functions, no trainer state.

Every trainer in the project (``alignment.train.sft``, ``alignment.train.dpo``, ``reward.train``)
computes log-probabilities, per-sample averaged losses and pairwise losses through this one
module, so the math is written and tested once (``tests/train/test_losses.py``).

Conventions (read these before calling):

- ``logits`` and ``labels`` are **already aligned**: ``labels[b, t]`` is the token that
  ``logits[b, t]`` predicts. For a causal LM whose labels are the input ids, shift first::

      logp_BT = token_logprobs(out.logits[:, :-1], labels[:, 1:])

  (the helpers never shift silently: a hidden shift is the classic off-by-one in DPO code).
- ``ignore_index`` (default ``-100``) marks positions that carry no loss (prompt tokens,
  padding, packing boundaries); they contribute ``0.0`` log-prob and no token count.
- Log-probs are computed in float32 whatever the logits' dtype (bf16 log-softmax over a large
  vocabulary loses the small differences DPO relies on).
- Shape suffixes: ``B`` batch rows, ``T`` positions, ``V`` vocabulary.

Run the tests with ``python -m pytest -q tests/train/test_losses.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "token_logprobs",
    "sequence_logprobs",
    "sample_ids_from_position_ids",
    "per_sample_mean",
    "per_sample_mean_loss",
    "bradley_terry_loss",
    "dpo_implicit_rewards",
    "dpo_loss",
]


def token_logprobs(logits_BTV: torch.Tensor, labels_BT: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Log-probability of each label token under the logits.

    Args:
        logits_BTV (`torch.Tensor`): ``[B, T, V]`` (or ``[N, V]``) logits, aligned with ``labels``.
        labels_BT (`torch.Tensor`): ``[B, T]`` (or ``[N]``) int64 target ids; ``ignore_index`` = no target.
        ignore_index (`int`, *optional*, defaults to `-100`): label value that is skipped.

    Returns:
        `torch.Tensor`: float32 ``[B, T]`` (or ``[N]``) log-probs, ``0.0`` at ignored positions.
    """
    if logits_BTV.shape[:-1] != labels_BT.shape:
        raise ValueError(
            f"logits {tuple(logits_BTV.shape)} and labels {tuple(labels_BT.shape)} are not aligned; "
            "shift them first (logits[:, :-1], labels[:, 1:])"
        )
    mask = labels_BT != ignore_index
    safe_labels = torch.where(mask, labels_BT, torch.zeros_like(labels_BT))
    logits = logits_BTV.float()
    # gather - logsumexp instead of a full log_softmax: one [.., V] temporary instead of two.
    picked = torch.gather(logits, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return torch.where(mask, logp, torch.zeros_like(logp))


def sequence_logprobs(
    logits_BTV: torch.Tensor,
    labels_BT: torch.Tensor,
    ignore_index: int = -100,
    average: bool = False,
) -> torch.Tensor:
    """Sum (or mean) of the label log-probs of each row: the sequence log-likelihood used by DPO.

    Args:
        logits_BTV (`torch.Tensor`): ``[B, T, V]`` logits aligned with ``labels``.
        labels_BT (`torch.Tensor`): ``[B, T]`` target ids, ``ignore_index`` where no target.
        ignore_index (`int`, *optional*, defaults to `-100`): label value that is skipped.
        average (`bool`, *optional*, defaults to `False`): divide by the number of target tokens
            (length-normalised log-prob, as in IPO/SimPO) instead of summing.

    Returns:
        `torch.Tensor`: float32 ``[B]``. A row with no target tokens gives ``0.0``.
    """
    logp_BT = token_logprobs(logits_BTV, labels_BT, ignore_index)
    total_B = logp_BT.sum(-1)
    if not average:
        return total_B
    count_B = (labels_BT != ignore_index).sum(-1).clamp(min=1)
    return total_B / count_B


def sample_ids_from_position_ids(position_ids_BT: torch.Tensor) -> torch.Tensor:
    """Which packed sample each position belongs to, from position ids that restart at 0.

    TRL's padding-free packing (``SFTConfig(packing=True)``) concatenates samples in one row and
    restarts ``position_ids`` at 0 for each; a new sample starts wherever the id is 0.

    Args:
        position_ids_BT (`torch.Tensor`): ``[B, T]`` int position ids.

    Returns:
        `torch.Tensor`: int64 ``[B, T]`` ids, unique across the whole batch (row ``b``'s samples never
        share an id with row ``b+1``'s), starting at 0.
    """
    starts = (position_ids_BT == 0).long()
    # A row that does not start at position 0 (a truncated continuation) still opens a sample.
    starts[:, 0] = 1
    flat = starts.flatten().cumsum(0) - 1
    return flat.view_as(position_ids_BT)


def per_sample_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor, sample_ids_BT: torch.Tensor | None = None) -> torch.Tensor:
    """Average ``values`` over each sample's own masked tokens, then over samples.

    This is the per-sample loss reweighting of the Yi-Lightning SFT recipe: a 2,000-token sample
    and a 20-token sample weigh the same, so long samples don't dominate the gradient. Samples
    with no masked token are left out of the outer mean.

    Args:
        values_BT (`torch.Tensor`): ``[B, T]`` per-token values (e.g. negative log-probs).
        mask_BT (`torch.Tensor`): ``[B, T]`` bool, which tokens count.
        sample_ids_BT (`torch.Tensor`, *optional*): ``[B, T]`` sample id of each position (packing;
            see :func:`sample_ids_from_position_ids`), each in ``[0, B*T + B)``. Defaults to one
            sample per row.

    Returns:
        `torch.Tensor`: scalar (float32; ``0.0`` times the values' sum when no token counts, so the
        graph stays connected).
    """
    if sample_ids_BT is None:
        rows = torch.arange(values_BT.shape[0], device=values_BT.device)
        sample_ids_BT = rows.unsqueeze(1).expand_as(values_BT)
    # Fixed-size buffers instead of compacting the ids with a boolean index or unique(), which would
    # make the host wait for the forward pass mid-step. Ids from sample_ids_from_position_ids over
    # [B, T] are < B*T; over the [B, T+1] row before a next-token shift still < B*T + B.
    mask = mask_BT.bool().reshape(-1)
    ids = sample_ids_BT.reshape(-1)
    vals = torch.where(mask, values_BT.reshape(-1).float(), 0.0)  # masked-out values may be anything, NaN included
    weight = mask.float()
    size = ids.numel() + values_BT.shape[0]
    sums = torch.zeros(size, device=vals.device, dtype=vals.dtype).index_add(0, ids, vals)
    counts = torch.zeros(size, device=vals.device, dtype=vals.dtype).index_add(0, ids, weight)
    present = counts > 0
    # no counted token at all: 0, still connected to the values (their gradient is 0)
    return (sums / counts.clamp(min=1.0)).sum() / present.sum().clamp(min=1)


def per_sample_mean_loss(
    logits_BTV: torch.Tensor,
    labels_BT: torch.Tensor,
    ignore_index: int = -100,
    sample_ids_BT: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy averaged over each sample's own target tokens, then over samples.

    Args:
        logits_BTV (`torch.Tensor`): ``[B, T, V]`` logits aligned with ``labels`` (already shifted).
        labels_BT (`torch.Tensor`): ``[B, T]`` targets, ``ignore_index`` where no loss.
        ignore_index (`int`, *optional*, defaults to `-100`): label value that is skipped.
        sample_ids_BT (`torch.Tensor`, *optional*): packed-sample id per position (aligned with
            ``labels``); defaults to one sample per row.

    Returns:
        `torch.Tensor`: scalar loss. With one sample per row and equal target counts this equals the
        usual token-mean cross-entropy.
    """
    nll_BT = -token_logprobs(logits_BTV, labels_BT, ignore_index)
    return per_sample_mean(nll_BT, labels_BT != ignore_index, sample_ids_BT)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def bradley_terry_loss(
    chosen_B: torch.Tensor,
    rejected_B: torch.Tensor,
    margin_B: torch.Tensor | float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Bradley-Terry pairwise loss ``-log sigmoid(r_chosen - r_rejected - margin)`` for reward models.

    Args:
        chosen_B (`torch.Tensor`): ``[B]`` scores of the preferred responses.
        rejected_B (`torch.Tensor`): ``[B]`` scores of the dispreferred responses.
        margin_B (`torch.Tensor` or `float`, *optional*): required score gap (Llama-2 style margin).
        reduction (`str`, *optional*, defaults to `"mean"`): ``mean``, ``sum`` or ``none``.

    Returns:
        `torch.Tensor`: the loss (float32).
    """
    diff = chosen_B.float() - rejected_B.float()
    if margin_B is not None:
        diff = diff - (margin_B.float() if torch.is_tensor(margin_B) else margin_B)
    return _reduce(-F.logsigmoid(diff), reduction)


def dpo_implicit_rewards(policy_logps_B: torch.Tensor, ref_logps_B: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` (detach it before logging)."""
    return beta * (policy_logps_B.float() - ref_logps_B.float())


def dpo_loss(
    policy_chosen_B: torch.Tensor,
    policy_rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid DPO loss (Rafailov et al. 2023) from sequence log-probs.

    ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``; with ``label_smoothing`` = eps it is the
    conservative DPO of Mitchell (2023): ``(1-eps) * that + eps * -log sigmoid(-logits)``.

    Args:
        policy_chosen_B (`torch.Tensor`): ``[B]`` policy log-probs of the chosen responses
            (from :func:`sequence_logprobs`).
        policy_rejected_B (`torch.Tensor`): ``[B]`` policy log-probs of the rejected responses.
        ref_chosen_B (`torch.Tensor`): ``[B]`` reference log-probs of the chosen responses (cached).
        ref_rejected_B (`torch.Tensor`): ``[B]`` reference log-probs of the rejected responses.
        beta (`float`): KL strength; larger keeps the policy closer to the reference.
        label_smoothing (`float`, *optional*, defaults to `0.0`): assumed preference-label noise.
        reduction (`str`, *optional*, defaults to `"mean"`): ``mean``, ``sum`` or ``none``.

    Returns:
        `torch.Tensor`: the loss (float32).
    """
    if beta <= 0:
        raise ValueError(f"dpo beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen_B.float() - ref_chosen_B.float()
    rejected_ratio = policy_rejected_B.float() - ref_rejected_B.float()
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return _reduce(losses, reduction)
