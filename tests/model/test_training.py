"""Gradients: LoRA trains only adapters (attention + expert projections), gradient checkpointing
gives the same gradients, top-p routing trains end to end, and the aux loss reaches the router."""

import torch
from peft import LoraConfig, get_peft_model

from tests.fixtures_model import build_tiny_model


def _grads(model, x):
    model.zero_grad()
    model(x, labels=x).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_lora_trains_only_adapters_on_attention_and_experts():
    model = build_tiny_model().train()
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["experts.gate_up_proj", "experts.down_proj"],
    )
    peft_model = get_peft_model(model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("experts" in n for n in trainable) and any("q_proj" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    for _ in range(2):  # step 1 moves lora_B off zero, step 2 moves lora_A too
        peft_model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == set(trainable)


def test_gradient_checkpointing_same_gradients():
    x = torch.randint(0, 1024, (2, 24))
    plain = build_tiny_model().train()
    ckpt = build_tiny_model().train()
    ckpt.gradient_checkpointing_enable()
    g1, g2 = _grads(plain, x), _grads(ckpt, x)
    assert g1.keys() == g2.keys()
    # k_proj of layer 3 gets gradient from layer 7 too (shared K/V) through the checkpoint boundary
    assert "model.layers.3.self_attn.k_proj.weight" in g2
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-6, rtol=1e-4, msg=n)


def test_top_p_routing_trains_and_router_gets_aux_gradient():
    model = build_tiny_model(router_type="top_p", router_top_p=0.5, router_min_k=1, router_max_k=4).train()
    x = torch.randint(0, model.config.vocab_size, (2, 24))
    out = model(x, labels=x)
    ept = out.router_stats["experts_per_token"]
    assert ((ept >= 1) & (ept <= 4)).all()
    model.zero_grad()
    out.aux_loss.backward()  # the balance loss alone must reach the router weights
    assert model.model.layers[1].mlp.gate.weight.grad.abs().sum() > 0
