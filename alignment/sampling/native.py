"""The ``native`` backend: batched sampling over the in-repo model and its own KV cache.

How a batch of prompts is sampled ``n`` times each:

1. **One prefill per prompt.** The batch's prompts are left-padded and run through the model
   once, filling the KV cache (YiLightningCache: ring buffers for sliding-window layers, one K/V
   per shared group of full-attention layers) and giving each prompt's next-token logits.
2. **Expand, don't recompute.** The cache and the last logits are repeated ``n`` times along the
   batch (prompt-major: rows ``p*n .. p*n+n-1`` are prompt ``p``'s samples), so the ``n``
   samples start from the shared prefix instead of re-running it (``generate`` with
   ``num_return_sequences`` re-runs it ``n`` times).
3. **Decode.** One token per row per step; rows that finish (EOS, a stop string, per row) are
   fed padding until the whole batch is done, and the batch is compacted (finished rows dropped
   from the cache) when at least half of it has finished, so long tails don't pay for dead rows.
   On CUDA (``decode="auto"``/``"static"``) decode steps instead run static_decode.py: the same
   weights over fixed-shape K/V buffers (ring + sharing kept), captured in a CUDA graph
   (``cuda_graphs``) once per batch and again after each compaction, because the model's own
   step is launch-bound and not capturable. Each step is launched before the host reads the
   previous step's tokens (a small device-to-host copy waited on by an event), so the GPU decodes
   while the host does the per-row bookkeeping (stop strings, compaction).

Left padding keeps every row's newest token in the same column; positions are per row
(``cumsum(mask) - 1``), so padding shifts neither RoPE nor the sliding window.

Sampling: temperature, then top-k, then top-p (the order transformers uses; ``nucleus_candidates``), one
``torch.Generator`` seeded from ``SamplingParams.seed`` (same seed, prompts and params -> same
samples; on a GPU up to the fused MoE's fp32 atomic adds in the prefill, whose order varies and can
flip a draw that sits on a bf16 boundary); ``logprob_sum`` is under the unmodified (temperature-1, unfiltered) distribution.

    sampler = build_sampler({"backend": "native"}, model, tokenizer)
    groups = sampler.generate(["1+1="], n=16, params=SamplingParams(max_new_tokens=32, seed=0))
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from alignment.sampling.base import Prompt, Sample, SamplingParams
from alignment.sampling.batching import check_params, left_pad, plan_batches
from alignment.sampling.config import SamplerConfig
from alignment.sampling.model_sampler import ModelSampler
from alignment.sampling.tokens import StopDetector, encode_prompts

# Compact the decode batch once this share of its rows has finished: dropping rows costs one
# gather of the cache, so doing it on every finish would cost more than it saves.
COMPACT_AT = 0.5


# Nucleus (top-p) sampling draws from each row's NUCLEUS_CANDIDATES most likely tokens (an unsorted
# torch.topk, then a sort of those) instead of sorting the whole vocabulary: in a 512-row decode step on
# an H200 the full sort and the scatter back took ~23% of the device time (bench/sampling.py --profile).
# A batch where some row's candidates hold less than top_p of the mass is redone over the whole
# vocabulary, so the draw stays exact (1,024: the upcycled base model at temperature 0.8 needed more
# than 256 in a third of its steps).
NUCLEUS_CANDIDATES = 1024


def nucleus_candidates(logits_BV: torch.Tensor, temperature: float, top_k: int, top_p: float,
                       max_candidates: int = NUCLEUS_CANDIDATES):
    """Temperature, then top-k, then top-p (the order transformers uses), as candidates.

    Returns ``(x_BC, ids_BC)``: float32 logits / temperature of each row's candidate tokens, most
    likely first, removed ones at -inf, and their vocabulary ids; ``ids_BC`` is None when nothing is
    filtered (``x_BC`` is then the whole row in vocabulary order). Top-p drops a token when the mass
    *before* it already reaches top_p (the top token always stays), over the top-k survivors.
    """
    x = logits_BV.float() / temperature
    V = x.shape[-1]
    k = top_k if 0 < top_k < V else V
    if top_p >= 1.0:
        if k == V:
            return x, None
        return torch.topk(x, k, dim=-1)
    c = min(k, max_candidates)
    # topk's own sorted output goes through a segmented radix sort that cost more than the selection
    # (0.85 ms per 512-row step on the H200); a row sort of the c candidates is one small kernel
    vals, ids = torch.topk(x, c, dim=-1, sorted=False)
    vals, order = torch.sort(vals, dim=-1, descending=True)
    ids = ids.gather(1, order)
    # the nucleus is taken over the top-k survivors' distribution
    lse = torch.logsumexp(x if k == V else (vals if c == k else torch.topk(x, k, dim=-1).values), dim=-1, keepdim=True)
    probs = torch.exp(vals - lse)
    before = probs.cumsum(dim=-1) - probs
    if c < k and not bool((before[:, -1] + probs[:, -1] >= top_p).all()):  # some nucleus is wider: redo exactly
        return nucleus_candidates(logits_BV, temperature, top_k, top_p, max_candidates=k)
    return vals.masked_fill(before >= top_p, float("-inf")), ids


def sample_tokens(logits_BV: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                  u_B: torch.Tensor | None = None):
    """Next token per row and its log-prob under the unmodified distribution.

    With ``u_B`` (one uniform per row, from the row's own stream) the draw is the inverse CDF at u
    over the row's candidates (most likely first): a row's draw depends on its logits and its u only,
    not on the other rows (``SamplingParams.seeds``)."""
    if params.temperature == 0:
        tok_B = torch.argmax(logits_BV, dim=-1)
    else:
        x_BC, ids_BC = nucleus_candidates(logits_BV, params.temperature, params.top_k, params.top_p)
        probs = torch.softmax(x_BC, dim=-1)
        if u_B is None:
            j_B = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            cdf = probs.cumsum(-1)
            # right=True: a zero-probability token (a flat step of the CDF) is never the one drawn
            j_B = torch.searchsorted(cdf, (u_B[:, None] * cdf[:, -1:]).contiguous(), right=True).squeeze(1)
            j_B = j_B.clamp(max=probs.shape[-1] - 1)
        tok_B = j_B if ids_BC is None else ids_BC.gather(1, j_B[:, None]).squeeze(1)
    logits = logits_BV.float()
    logp_B = logits.gather(1, tok_B[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return tok_B, logp_B


def cache_batch_apply(cache, fn) -> None:
    """Apply ``fn`` (a batch-dim op: repeat_interleave, index_select) to every K/V tensor of a
    transformers-style cache in place. Works for YiLightningCache's ring / full layers and for
    transformers' own layers; per-slot bookkeeping (ring positions) has no batch dim and stays."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", True) and isinstance(getattr(layer, "keys", None), torch.Tensor):
            layer.keys = fn(layer.keys)
            layer.values = fn(layer.values)


class NativeSampler(ModelSampler):
    """Batched multi-sample generation with one shared prefill per prompt.

    ``stats`` counts model calls since construction (``prefill_calls``, ``prefill_tokens``,
    ``decode_steps``, ``decode_rows``, ``compactions``) so tests and the benchmark can see where time goes.
    """

    def __init__(self, model, tokenizer, cfg: SamplerConfig, device: str = "cpu"):
        super().__init__(model, tokenizer, cfg, device)
        self.stats = dict(prefill_calls=0, prefill_tokens=0, decode_steps=0, decode_rows=0, compactions=0)

    # ------------------------------------------------------------------ model calls
    def _new_cache(self):
        """The model's own cache: YiLightningCache (ring buffers + shared K/V) for the in-repo
        model; transformers' DynamicCache for any other causal LM (tests compare against Llama)."""
        if self.model.config.model_type == "yi_lightning":
            from alignment.model.cache import YiLightningCache

            return YiLightningCache(self.model.config)
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    # ------------------------------------------------------------------ public API
    # no_grad, not inference_mode: inference tensors have no version counter, which the GPU
    # attention kernel's block-mask cache reads (alignment/kernels/attention.py).
    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[list[Sample]]:
        check_params(n, params, len(prompts))
        ids = encode_prompts(self.tokenizer, prompts)
        detector = StopDetector(self.tokenizer, params.stop, self.eos_ids)
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        # SamplingParams.seeds: one stream per prompt, whatever batch the prompt lands in
        streams = None
        if params.seeds is not None:
            streams = [torch.Generator(device=self.device).manual_seed(int(s)) for s in params.seeds]
        out: list[list[Sample]] = [[] for _ in ids]
        batches = plan_batches([len(p) for p in ids], n, self.cfg)
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; the caller's mode is restored after
        try:
            for idx in tqdm(batches, desc="native sampling", unit="batch", disable=len(batches) < 2):
                groups = self._generate_batch([ids[i] for i in idx], n, params, detector, generator,
                                              None if streams is None else [streams[i] for i in idx])
                for i, g in zip(idx, groups):
                    out[i] = g
        finally:
            self.model.train(was_training)
        return out

    def _use_static(self) -> bool:
        if self.cfg.decode == "auto":
            return self.device.type == "cuda" and self.model.config.model_type == "yi_lightning"
        if self.cfg.decode == "static" and self.model.config.model_type != "yi_lightning":
            raise ValueError("sampler.decode='static' needs the in-repo model (model_type yi_lightning)")
        return self.cfg.decode == "static"

    def _generate_batch(self, rows, n, params, detector, generator, streams=None) -> list[list[Sample]]:
        multiple = self.cfg.prompt_pad_multiple or (64 if self.device.type == "cuda" else 1)
        input_ids, mask = left_pad(rows, self.pad_id, self.device, multiple)
        P, L = input_ids.shape
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache()
        logits = self._forward(input_ids, mask, pos, cache)
        self.stats["prefill_calls"] += 1
        self.stats["prefill_tokens"] += P * L

        # Share the prefill: every prompt's cache rows and logits are repeated n times.
        static = None
        if self._use_static():
            from alignment.sampling.static_decode import StaticDecoder

            static = StaticDecoder(self.model, P * n, L + params.max_new_tokens, use_graph=self.cfg.cuda_graphs,
                                   compile=self.cfg.compile_decode)
            static.load_prefill(cache, mask, n)
            del cache
        elif n > 1:
            cache_batch_apply(cache, lambda t: t.repeat_interleave(n, dim=0))
            mask = mask.repeat_interleave(n, dim=0)
        logits = logits.repeat_interleave(n, dim=0)
        next_pos = pos[:, -1].repeat_interleave(n) + 1

        B = P * n
        live = list(range(B))  # live[j] = original row of current batch row j
        live_t = torch.arange(B, device=self.device) if streams is not None else None  # the same, on the device
        tokens: list[list[int]] = [[] for _ in range(B)]
        logp_sums = [0.0] * B
        ended = [False] * B
        for step in range(params.max_new_tokens):
            u = None
            if streams is not None and params.temperature > 0:
                # n uniforms per prompt every step, finished rows included: a prompt's stream advances the
                # same way whoever shares its batch; the live rows read theirs
                u_all = torch.cat([torch.rand(n, generator=g, device=self.device) for g in streams])
                u = u_all[live_t]
            tok, lp = sample_tokens(logits, params, generator, u)
            drawn = torch.stack([tok.to(lp.dtype), lp])
            if self.device.type == "cuda":
                drawn = drawn.to("cpu", non_blocking=True)
                drawn_ready = torch.cuda.Event()
                drawn_ready.record()
            last = step == params.max_new_tokens - 1
            if not last:
                # Launch the next step before reading this one's tokens: the GPU decodes while the host
                # does the bookkeeping below. Rows that end now decode one token that is ignored.
                if static is not None:
                    logits = static.step(tok, next_pos, L + step)
                else:
                    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                    logits = self._forward(tok[:, None], mask, next_pos[:, None], cache)
                next_pos = next_pos + 1
                self.stats["decode_steps"] += 1
                self.stats["decode_rows"] += len(live)
            if self.device.type == "cuda":
                drawn_ready.synchronize()  # the tokens only, not the step launched after them
            tok_l, lp_l = drawn.tolist()
            tok_l = [int(x) for x in tok_l]
            active = [(j, r) for j, r in enumerate(live) if not ended[r]]
            for j, r in active:
                tokens[r].append(tok_l[j])
                logp_sums[r] += lp_l[j]
            for (j, r), d in zip(active, detector.ended([tokens[r] for _, r in active])):
                ended[r] = d
            keep = [j for j, r in enumerate(live) if not ended[r]]
            if not keep or last:
                break
            if len(keep) <= (1 - COMPACT_AT) * len(live):
                # Drop finished rows (after the step just launched: its K/V and logits are selected too);
                # until then they decode tokens whose output is ignored.
                sel = torch.tensor(keep, device=self.device)
                if static is not None:
                    static = static.compact(sel)
                else:
                    cache_batch_apply(cache, lambda t: t.index_select(0, sel))
                    mask = mask[sel]
                logits, next_pos = logits[sel], next_pos[sel]
                live = [live[j] for j in keep]
                live_t = live_t[sel] if live_t is not None else None
                self.stats["compactions"] += 1

        samples = [detector.finish(tokens[r], logp_sums[r], ended[r]) for r in range(B)]
        return [samples[p * n : (p + 1) * n] for p in range(P)]
