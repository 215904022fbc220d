"""Unit tests for alignment/train/losses.py (the loss math SFT, RM and DPO share).

Run: python -m pytest -q tests/train/test_losses.py
"""

import math

import pytest
import torch
import torch.nn.functional as F

from alignment.train.losses import (
    bradley_terry_loss,
    dpo_implicit_rewards,
    dpo_loss,
    per_sample_mean,
    per_sample_mean_loss,
    sample_ids_from_position_ids,
    sequence_logprobs,
    token_logprobs,
)


def _rand(B=3, T=5, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    return logits, labels


def test_token_logprobs_matches_log_softmax_and_zeroes_ignored():
    logits, labels = _rand()
    labels[0, :2] = -100
    got = token_logprobs(logits, labels)
    ref = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got[labels != -100], ref[labels != -100], atol=1e-6)
    assert torch.all(got[0, :2] == 0.0)
    assert got.dtype == torch.float32


def test_token_logprobs_bf16_is_computed_in_fp32():
    logits, labels = _rand(V=50)
    got = token_logprobs(logits.bfloat16(), labels)
    ref = token_logprobs(logits.bfloat16().float(), labels)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-6)


def test_token_logprobs_rejects_unshifted_shapes():
    logits, labels = _rand()
    with pytest.raises(ValueError, match="shift"):
        token_logprobs(logits[:, :-1], labels)


def test_sequence_logprobs_sum_and_average():
    logits, labels = _rand()
    labels[1, 3:] = -100
    tok = token_logprobs(logits, labels)
    assert torch.allclose(sequence_logprobs(logits, labels), tok.sum(-1))
    avg = sequence_logprobs(logits, labels, average=True)
    assert torch.isclose(avg[1], tok[1, :3].sum() / 3)
    assert torch.isclose(avg[0], tok[0].sum() / 5)


def test_sample_ids_from_position_ids_packed_rows():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [3, 4, 0, 1, 2, 3]])
    ids = sample_ids_from_position_ids(pos)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 2], [3, 3, 4, 4, 4, 4]]


def test_per_sample_mean_weighs_samples_equally():
    # One long sample of 4 tokens with value 1 and a short one of 1 token with value 5:
    # the token mean is (4 + 5) / 5 = 1.8, the per-sample mean is (1 + 5) / 2 = 3.
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    assert per_sample_mean(values, mask).item() == pytest.approx(3.0)
    assert (values[mask].mean()).item() == pytest.approx(1.8)


def test_per_sample_mean_packed_equals_unpacked():
    values = torch.tensor([[2.0, 4.0, 6.0, 1.0, 3.0]])
    mask = torch.ones_like(values).bool()
    sample_ids = torch.tensor([[0, 0, 0, 1, 1]])
    packed = per_sample_mean(values, mask, sample_ids)
    assert packed.item() == pytest.approx((4.0 + 2.0) / 2)


def test_per_sample_mean_skips_samples_without_tokens_and_empty_keeps_graph():
    values = torch.tensor([[1.0, 2.0], [7.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [0, 0]]).bool()
    assert per_sample_mean(values, mask).item() == pytest.approx(1.5)
    empty = per_sample_mean(values, torch.zeros_like(mask))
    assert empty.item() == 0.0
    empty.backward()  # graph stays connected: no "does not require grad" error
    assert values.grad is not None


def test_per_sample_mean_loss_equals_cross_entropy_when_lengths_equal():
    logits, labels = _rand()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert torch.isclose(per_sample_mean_loss(logits, labels), ce, atol=1e-6)


def test_per_sample_mean_loss_differs_from_token_mean_when_lengths_differ():
    logits, labels = _rand(B=2, T=6)
    labels[1, 1:] = -100
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    nll = -token_logprobs(logits, labels)
    expected = (nll[0].mean() + nll[1, 0]) / 2
    got = per_sample_mean_loss(logits, labels)
    assert torch.isclose(got, expected, atol=1e-6)
    assert not torch.isclose(got, ce, atol=1e-4)


def test_bradley_terry_loss_values_and_margin():
    c = torch.tensor([2.0, 0.0])
    r = torch.tensor([0.0, 0.0])
    got = bradley_terry_loss(c, r, reduction="none")
    assert got[0].item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))), rel=1e-5)
    assert got[1].item() == pytest.approx(math.log(2.0), rel=1e-5)
    # A margin of 2 turns the first pair into a tie.
    assert bradley_terry_loss(c, r, margin_B=2.0, reduction="none")[0].item() == pytest.approx(math.log(2.0), rel=1e-5)
    assert bradley_terry_loss(c, r).item() == pytest.approx(got.mean().item())
    with pytest.raises(ValueError, match="reduction"):
        bradley_terry_loss(c, r, reduction="avg")


def test_dpo_loss_matches_formula_and_gradient_sign():
    pc = torch.tensor([-5.0, -3.0], requires_grad=True)
    pr = torch.tensor([-6.0, -2.0], requires_grad=True)
    rc = torch.tensor([-5.5, -3.0])
    rr = torch.tensor([-5.5, -3.0])
    beta = 0.1
    loss = dpo_loss(pc, pr, rc, rr, beta)
    logits = beta * ((pc - rc) - (pr - rr))
    assert loss.item() == pytest.approx((-F.logsigmoid(logits)).mean().item(), rel=1e-6)
    loss.backward()
    # Minimising DPO raises chosen log-probs and lowers rejected ones.
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)
    # Policy == reference gives log 2 whatever beta is.
    same = dpo_loss(rc, rr, rc, rr, beta=0.5)
    assert same.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_dpo_label_smoothing_and_validation():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -4.0, -2.0, -2.0))
    eps = 0.2
    logits = 0.5 * ((pc - rc) - (pr - rr))
    expected = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    assert dpo_loss(pc, pr, rc, rr, 0.5, label_smoothing=eps).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)
    assert torch.allclose(dpo_implicit_rewards(pc, rc, 0.5), torch.tensor([0.5]))


def test_per_sample_mean_with_shifted_packed_ids_and_nan_outside_the_mask():
    # sft_loss shifts the ids by one position ([:, 1:]): the largest id can then reach B*T_shifted + B - 1
    pos = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 0, 0, 1]])
    ids = sample_ids_from_position_ids(pos)[:, 1:]
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [float("nan"), 5.0, 6.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]).bool()
    # samples: 1,2,3,4 (first row, one token each), then {5} and {6, 8}: per-sample means 1,2,3,4,5,7
    assert per_sample_mean(values, mask, ids).item() == pytest.approx((1 + 2 + 3 + 4 + 5 + 7) / 6)
