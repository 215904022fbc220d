"""Routers and balance losses on constructed routings with hand-computed values."""

import pytest
import torch

from alignment.model import routing


def test_top_p_picks_fewest_experts_reaching_mass_clamped():
    probs = torch.tensor([
        [0.70, 0.10, 0.10, 0.05, 0.05],  # 0.70 >= 0.6 -> 1 expert, but min_k=2 -> 2
        [0.30, 0.25, 0.20, 0.15, 0.10],  # 0.30, 0.55, 0.75 -> 3 experts
        [0.20, 0.20, 0.20, 0.20, 0.20],  # 0.2, 0.4, 0.6 -> needs 3 (0.6 reaches 0.6)
        [0.22, 0.20, 0.20, 0.19, 0.19],  # 0.22, 0.42, 0.62 -> 3
    ])
    idx, w = routing.route_top_p(probs, p=0.6, min_k=2, max_k=3, norm=False)
    assert (idx >= 0).sum(-1).tolist() == [2, 3, 3, 3]
    assert idx[0].tolist() == [0, 1, -1] and w[0, 2] == 0
    idx, _ = routing.route_top_p(probs, p=0.95, min_k=1, max_k=2, norm=True)
    assert (idx >= 0).sum(-1).tolist() == [2, 2, 2, 2]  # clamped at max_k
    idx, w = routing.route_top_p(probs, p=0.5, min_k=1, max_k=4, norm=True)
    assert (idx >= 0).sum(-1).tolist() == [1, 2, 3, 3]
    torch.testing.assert_close(w.sum(-1), torch.ones(4))


def test_topk_normalised_weights():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    idx, w = routing.route_topk(probs, 2, norm=True)
    assert idx.tolist() == [[0, 1], [2, 0]] or idx.tolist() == [[0, 1], [2, 1]]
    torch.testing.assert_close(w[0], torch.tensor([0.625, 0.375]))


def test_balance_losses_hand_computed():
    # 4 tokens, 4 experts, 2 EP groups {0,1},{2,3}, 2 partitions per group -> 4 partitions = experts.
    probs = torch.tensor([
        [0.4, 0.3, 0.2, 0.1],
        [0.4, 0.3, 0.2, 0.1],
        [0.1, 0.2, 0.3, 0.4],
        [0.7, 0.1, 0.1, 0.1],
    ])
    idx = torch.tensor([[0, 1], [0, 1], [3, 2], [0, -1]])  # last token: one slot unused (top-p)
    # loads: e0=3, e1=2, e2=1, e3=1 over 7 assignments; mean probs P = [0.4, 0.225, 0.2, 0.175]
    f = torch.tensor([3, 2, 1, 1]) / 7
    P = torch.tensor([0.4, 0.225, 0.2, 0.175])
    st = 4 * (f * P).sum()
    ep = 2 * ((f[0] + f[1]) * (P[0] + P[1]) + (f[2] + f[3]) * (P[2] + P[3]))
    losses = routing.aux_losses(probs, idx, ep_groups=2, pep_partitions=2)
    torch.testing.assert_close(losses["switch"], st)
    torch.testing.assert_close(losses["ep"], ep)
    torch.testing.assert_close(losses["pep"], st)  # 2x2 partitions of 4 experts = per expert
    assert abs(float(st) - 4 * (3 * 0.4 + 2 * 0.225 + 0.2 + 0.175) / 7) < 1e-6
    # a masked (pad) token leaves the counts and the mean probabilities
    mask = torch.tensor([1, 1, 1, 0])
    f2 = torch.tensor([2, 2, 1, 1]) / 6
    P2 = probs[:3].mean(0)
    torch.testing.assert_close(routing.balance_loss(probs, idx, 4, mask), 4 * (f2 * P2).sum())


def test_balance_loss_is_one_when_uniform_and_g_when_collapsed():
    uniform = torch.full((8, 4), 0.25)
    idx = torch.arange(8).remainder(4)[:, None]
    assert float(routing.balance_loss(uniform, idx, 4)) == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0, 0, 0]]).repeat(8, 1)
    assert float(routing.balance_loss(collapsed, torch.zeros(8, 1, dtype=torch.long), 4)) == pytest.approx(4.0)


def test_routing_stats():
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    idx = torch.tensor([[0, 1, -1], [2, 3, 0]])
    s = routing.routing_stats(probs, idx)
    assert s["tokens_per_expert"].tolist() == [2, 1, 1, 1]
    assert float(s["experts_per_token"]) == 2.5
    torch.testing.assert_close(s["entropy"], torch.tensor((0.6931472 + 1.3862944) / 2))


def test_model_aux_loss_weights_the_three_losses(tiny_model):
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 16))
    out = tiny_model(x)
    c, st = tiny_model.config, out.router_stats
    expected = (c.aux_coef_switch * st["aux_switch"] + c.aux_coef_ep * st["aux_ep"] + c.aux_coef_pep * st["aux_pep"]).mean()
    torch.testing.assert_close(out.aux_loss.detach(), expected)
    assert (c.aux_coef_switch, c.aux_coef_ep, c.aux_coef_pep) == (1e-6, 1e-4, 1e-3)
