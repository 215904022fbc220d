"""Static-shape decode step for YiLightningForCausalLM: the native sampler's GPU path.

The model's own forward (modeling.py + YiLightningCache) grows its cache by concatenation and
routes MoE tokens with a host sync per layer, so it cannot be captured in a CUDA graph, and at
decode batch sizes a step is bound by kernel-launch overhead, not by the GPU. This module runs the
*same weights* through a decode-only step whose every tensor has a fixed shape:

- K/V live in preallocated buffers, one per K/V *owner* layer (so the cross-layer sharing of
  ``config.kv_plan()`` is kept: a sharing layer reads its owner's buffer), full-attention owners
  hold ``max_len`` slots, sliding-window owners a ring of ``min(window, max_len)`` slots written at
  ``slot % ring`` (the ring buffer of cache.py, in place);
- positions are "slots" as in cache.py (left padding included, masked by ``valid``), RoPE uses each
  row's own position, so padding shifts neither RoPE nor the window;
- the MoE runs every expert on every decode token and weights the outputs by the router's
  (mostly zero) combine weights: no data-dependent shapes, no host sync. At decode batch sizes
  (hundreds of tokens x top-k) nearly every expert is hit anyway, so the step reads each expert's
  weights once either way; the extra FLOPs are cheap next to that memory traffic.

The prompt prefill still runs the model's own forward (YiLightningCache) once per prompt; its
cache is then copied into these buffers, repeated n times along the batch.

Checked against full forward passes in tests/sampling/test_native.py (``decode="static"`` on CPU);
CUDA graphs are captured only on CUDA.

Shape legend: B decode rows, L slots (max_len), R ring slots, D hidden, H heads, Kh kv heads,
Dh head dim, E experts, I expert FFN width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignment.kernels import load_triton_paths, moe_experts_dense
from alignment.model.modeling import apply_rope, rope_cos_sin


def _fused_qkv_weights(model) -> list[torch.Tensor]:
    """Per layer, the query (and, for a K/V owner, key and value) projection weights stacked into
    one ``[out, D]`` matrix."""
    out = []
    for layer in model.model.layers:
        attn = layer.self_attn
        parts = [attn.q_proj.weight] + ([attn.k_proj.weight, attn.v_proj.weight] if attn.owns_kv else [])
        out.append(torch.cat(parts, 0) if len(parts) > 1 else parts[0])
    return out


def _moe_all_experts(moe, x_TD: torch.Tensor) -> torch.Tensor:
    _, _, idx_TK, w_TK = moe.route(x_TD)
    # every expert on every token, weighted by the router (0 where not picked): fixed shapes
    y_TD = moe_experts_dense(x_TD, moe.experts.gate_up_proj, moe.experts.down_proj, idx_TK, w_TK)
    if moe.shared_experts is not None:
        y_TD = y_TD + moe.shared_experts(x_TD)
    return y_TD


def decode_step(model, qkv_w, plan, sliding, ring, k_buf, v_buf, ring_pos, valid_BL, slots_L, tok_B, pos_B, t_1):
    """One decode token per row: write its K/V at slot ``t_1`` (in place), return next-token logits
    [B, V]. A function of its arguments only (the decoder's buffers), so one compiled version serves
    every decoder of a process (``compile_decode``)."""
    cfg, m = model.config, model.model
    B = tok_B.shape[0]
    H, Kh, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    t = t_1
    h = m.embed_tokens(tok_B[:, None])
    cos, sin = rope_cos_sin(cfg, pos_B[:, None], h.dtype)
    valid_BL.index_fill_(1, t, True)
    full_mask = (valid_BL & (slots_L[None] <= t))[:, None, None, :]
    shared = {}
    for i, layer in enumerate(m.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        qkv = (x[:, 0] @ qkv_w[i].t()).view(B, -1, 1, Dh)  # [B, H (+ Kh + Kh), 1, Dh]
        n_rope = H + Kh if attn.owns_kv else H  # RoPE on the queries and keys at once
        qk = apply_rope(qkv[:, :n_rope], cos, sin)
        q = qk[:, :H]
        if attn.owns_kv:
            k = qk[:, H:]
            v = qkv[:, n_rope:]
            if sliding[i]:
                slot = t % ring
                k_buf[i].index_copy_(2, slot, k)
                v_buf[i].index_copy_(2, slot, v)
                ring_pos[i].index_copy_(0, slot, t)
                rp = ring_pos[i]
                # Every ring slot holds one of the last `ring` positions (<= window): only
                # never-written slots and left padding are masked.
                mask = ((rp >= 0)[None] & valid_BL[:, rp.clamp_min(0)])[:, None, None, :]
            else:
                k_buf[i].index_copy_(2, t, k)
                v_buf[i].index_copy_(2, t, v)
                mask = full_mask
            shared[i] = (k_buf[i], v_buf[i], mask)
        K, V, mask = shared[plan[i]]
        o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, enable_gqa=Kh != H)
        h = h + attn.o_proj(o.transpose(1, 2).reshape(B, 1, H * Dh))
        x = layer.post_attention_layernorm(h)
        if layer.is_moe:
            h = h + _moe_all_experts(layer.mlp, x.view(B, -1)).view_as(h)
        else:
            h = h + layer.mlp(x)
    return model.lm_head(m.norm(h))[:, 0]


# compile_decode: Inductor fuses the step's elementwise kernels (RoPE, masks, routing, SwiGLU, residual
# adds), which were ~40% of a CUDA-graphed decode step's device time on the H200. dynamic=True: one
# compile serves every batch size and length (compaction shrinks the batch), not one per decoder.
COMPILE_BACKEND = "inductor"
_compiled = {}


def _compiled_step():
    fn = _compiled.get(COMPILE_BACKEND)
    if fn is None:
        fn = _compiled[COMPILE_BACKEND] = torch.compile(decode_step, backend=COMPILE_BACKEND, dynamic=True)
    return fn


class StaticDecoder:
    """Fixed-shape decode state + step for ``batch`` rows and up to ``max_len`` slots."""

    def __init__(self, model, batch: int, max_len: int, use_graph: bool, qkv_w: list | None = None,
                 compile: bool = False):
        cfg = model.config
        self.model, self.cfg = model, cfg
        self.plan = cfg.kv_plan()
        self.B, self.L = batch, max_len
        p = next(model.parameters())
        dev, dt = p.device, p.dtype
        Kh, Dh = cfg.num_key_value_heads, cfg.head_dim
        self.ring = min(cfg.sliding_window, max_len)
        self.sliding = {o: cfg.layer_types[o] == "sliding_attention" for o in set(self.plan)}
        self.k, self.v, self.ring_pos = {}, {}, {}
        for o, sliding in self.sliding.items():
            n = self.ring if sliding else max_len
            self.k[o] = torch.zeros(batch, Kh, n, Dh, device=dev, dtype=dt)
            self.v[o] = torch.zeros(batch, Kh, n, Dh, device=dev, dtype=dt)
            if sliding:
                self.ring_pos[o] = torch.full((n,), -1, device=dev, dtype=torch.long)
        self.valid_BL = torch.zeros(batch, max_len, device=dev, dtype=torch.bool)
        self.slots_L = torch.arange(max_len, device=dev)
        # Static inputs of the step (a CUDA graph replays on these very tensors).
        self.tok_B = torch.zeros(batch, device=dev, dtype=torch.long)
        self.pos_B = torch.zeros(batch, device=dev, dtype=torch.long)
        self.t_1 = torch.zeros(1, device=dev, dtype=torch.long)
        self.use_graph = use_graph and dev.type == "cuda"
        self.graph = None
        self.logits_BV = None
        # one projection GEMM per layer instead of three (taken from the model now: its weights are
        # fixed while it samples); a compacted decoder reuses its parent's
        self.qkv_w = _fused_qkv_weights(model) if qkv_w is None else qkv_w
        self.compile = compile
        if compile:
            load_triton_paths()  # the kernels' dispatch answered before tracing, not traced


    # ------------------------------------------------------------------ state
    def load_prefill(self, cache, attention_mask_PL: torch.Tensor, n: int) -> None:
        """Copy a prefilled YiLightningCache (P rows) into the buffers, each row repeated n times."""
        P, Lp = attention_mask_PL.shape
        if P * n != self.B or Lp >= self.L:
            raise ValueError(f"prefill of {P}x{Lp} does not fit a static decoder of {self.B} rows x {self.L} slots")
        for o, sliding in self.sliding.items():
            layer = cache.layers[cache.slot_of[o]]
            keys, values = layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0)
            if sliding:
                slots = layer.positions % self.ring
                self.k[o][:, :, slots] = keys
                self.v[o][:, :, slots] = values
                self.ring_pos[o][slots] = layer.positions
            else:
                self.k[o][:, :, :Lp] = keys
                self.v[o][:, :, :Lp] = values
        self.valid_BL[:, :Lp] = attention_mask_PL.bool().repeat_interleave(n, 0)

    def compact(self, rows_R: torch.Tensor) -> "StaticDecoder":
        """A decoder for only ``rows_R`` (finished rows dropped): the state is copied into a new,
        smaller set of buffers; its CUDA graph is captured again on its first step."""
        new = StaticDecoder(self.model, len(rows_R), self.L, self.use_graph, qkv_w=self.qkv_w, compile=self.compile)
        for o in self.k:
            new.k[o].copy_(self.k[o].index_select(0, rows_R))
            new.v[o].copy_(self.v[o].index_select(0, rows_R))
        for o in self.ring_pos:
            new.ring_pos[o].copy_(self.ring_pos[o])
        new.valid_BL.copy_(self.valid_BL.index_select(0, rows_R))
        return new

    # ------------------------------------------------------------------ the step
    def _step(self) -> torch.Tensor:
        fn = _compiled_step() if self.compile else decode_step
        return fn(self.model, self.qkv_w, self.plan, self.sliding, self.ring, self.k, self.v, self.ring_pos,
                  self.valid_BL, self.slots_L, self.tok_B, self.pos_B, self.t_1)

    def step(self, tok_B: torch.Tensor, pos_B: torch.Tensor, t: int) -> torch.Tensor:
        """Write K/V of ``tok_B`` (RoPE positions ``pos_B``) at slot ``t``; return next-token logits.

        The step is idempotent for a given (tok, pos, t), which is what makes the graph warm-up
        and capture (both run it) harmless.
        """
        if t >= self.L:
            raise ValueError(f"slot {t} is past the static decoder's {self.L} slots")
        self.tok_B.copy_(tok_B)
        self.pos_B.copy_(pos_B)
        self.t_1.fill_(t)
        if not self.use_graph:
            return self._step()
        if self.graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: lazy inits, Triton autotune, cuBLAS workspaces
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits_BV = self._step()
        self.graph.replay()
        return self.logits_BV
