"""Hard-example selection for SFT stage 2: score a candidate pool with the stage-1 model.

The Yi-Lightning report's second SFT stage trains on ~300K harder examples grown from ~10K
seeds. Here "hard" means, per candidate:

- its **loss** under the stage-1 model: mean negative log-likelihood of the assistant tokens
  (:func:`example_losses`; each example averaged over its own tokens, so length does not
  decide), and, where a verifier applies,
- its **pass rate**: the share of ``k`` samples from the stage-1 model that a caller-supplied
  ``pass_rate_fn(prompt_messages, sample_texts) -> float | None`` accepts (None = no verifier
  for this example). ``alignment`` never imports ``synth``: the stage resolves the hook from a
  dotted path in the recipe (e.g. a ``alignment.tasks.verify`` helper) and passes it in.

:func:`select_hardest` ranks by hardness = the loss percentile, averaged with ``1 - pass_rate``
where a pass rate exists, and keeps the top ``n`` (ties broken by pool order, so it is
deterministic).

Seed expansion hook: a ``seed_expander(seeds, n_new, seed) -> list[record]`` (dotted path
``hard.seed_expander`` in the recipe) turns the selected seed examples into more examples
(the report grows ~10K seeds to ~300K, e.g. by rewriting prompts with a strong model or by
synth search on the seed problems). Its outputs must be chat records (they are re-validated
and decontaminated like any source); without one, selection alone decides the stage-2 pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from alignment.data.records import prompt_messages
from alignment.kernels import linear_cross_entropy

PassRateFn = Callable[[dict, list[str]], Optional[float]]
SeedExpander = Callable[[list[dict], int, int], list[dict]]


@dataclass
class HardSelectionSpec:
    """How stage 2 picks hard examples from its candidate pool.

    Args:
        enabled (`bool`, *optional*, defaults to `True`): score and select; off keeps the pool as is.
        pool_sources (`list[str]`, *optional*): names of the mixture's sources whose records are
            ranked; each keeps its hardest ``target`` records (its mixture count). Defaults to every
            recipe source; the synth stage's verified records are never ranked (hard by construction).
        pool_per_source (`int`, *optional*): score at most this many candidates per source (a seeded
            random subset), bounding the scoring cost on large sources.
        max_length (`int`, *optional*, defaults to `1024`): tokens per example when scoring.
        batch_size (`int`, *optional*, defaults to `8`): examples per scoring forward pass.
        pass_rate_fn (`str`, *optional*): dotted path of a ``PassRateFn``; needs a sampler.
        pass_rate_k (`int`, *optional*, defaults to `4`): samples per prompt for the pass rate.
        pass_rate_max_new_tokens (`int`, *optional*, defaults to `256`): sample length.
        seed_expander (`str`, *optional*): dotted path of a ``SeedExpander``.
        expand_to (`int`, *optional*): total examples after seed expansion (the expander makes
            ``expand_to - len(mixture)`` new ones from the selected records).
    """

    enabled: bool = True
    pool_sources: Optional[list[str]] = None
    pool_per_source: Optional[int] = None
    max_length: int = 1024
    batch_size: int = 8
    pass_rate_fn: Optional[str] = None
    pass_rate_k: int = 4
    pass_rate_max_new_tokens: int = 256
    seed_expander: Optional[str] = None
    expand_to: Optional[int] = None


def _encode(tokenizer, record: dict, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 mask of the assistant tokens of ``record`` (truncated to ``max_length``).

    Uses the chat template's ``{% generation %}`` markers when present; otherwise only the last
    assistant turn counts (the suffix after the tokenized prompt).
    """
    out = tokenizer.apply_chat_template(
        record["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(out["input_ids"]), list(out.get("assistant_masks") or [])
    if not any(mask):
        prompt = tokenizer.apply_chat_template(prompt_messages(record), tokenize=True, add_generation_prompt=True, return_dict=True)
        n = len(prompt["input_ids"])
        mask = [0] * n + [1] * (len(ids) - n)
    return ids[:max_length], mask[:max_length]


@torch.no_grad()
def example_losses(model, tokenizer, records: Sequence[dict], max_length: int = 1024, batch_size: int = 8, device: str | torch.device = "cpu") -> list[float]:
    """Mean assistant-token NLL of each record under ``model`` (higher = harder).

    Records are batched by length (less padding); the result is in the input order. A record
    whose assistant part is cut away by ``max_length`` scores ``0.0`` (nothing to learn there).
    """
    was_training = model.training
    model.eval()
    # bf16 autocast on a GPU, as in training (the stage's model holds fp32 master weights): faster,
    # and the attention kernels then meet the dtype they were compiled for
    dev = torch.device(device).type
    amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda" and torch.cuda.is_bf16_supported())
    encoded = [_encode(tokenizer, r, max_length) for r in records]
    order = sorted(range(len(records)), key=lambda i: len(encoded[i][0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = [0.0] * len(records)
    for start in tqdm(range(0, len(order), batch_size), desc="score pool", disable=len(order) < 2000, mininterval=5):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            tok, mask = encoded[i]
            ids[row, : len(tok)] = torch.tensor(tok)
            attn[row, : len(tok)] = 1
            labels[row, : len(tok)] = torch.where(torch.tensor(mask).bool(), torch.tensor(tok), torch.tensor(-100))
        # Final hidden states + chunked linear cross-entropy: a pool batch at paper scale
        # (16 x 4,096 tokens x 100K vocabulary) would need ~26 GB of float32 logits.
        with amp:
            out = model(input_ids=ids.to(device), attention_mask=attn.to(device), output_hidden_states=True,
                        logits_to_keep=1, use_cache=False)
            h = out.hidden_states[-1][:, :-1]
            target = labels[:, 1:].to(device)
            logp = linear_cross_entropy(h.reshape(-1, h.shape[-1]), model.get_output_embeddings().weight,
                                        target.reshape(-1)).view_as(target)
        # Each example averaged over its own target tokens: length does not decide hardness.
        mean_logp = logp.float().sum(-1) / (target != -100).sum(-1).clamp(min=1)
        for i, value in zip(idx, (-mean_logp).tolist()):
            losses[i] = value
    model.train(was_training)
    return losses


def pass_rates(records: Sequence[dict], sampler, pass_rate_fn: PassRateFn, k: int, params) -> list[Optional[float]]:
    """Share of ``k`` samples per prompt that ``pass_rate_fn`` accepts (None where it has no verifier).

    Args:
        records (`Sequence[dict]`): chat records; the prompt is everything before the last assistant turn.
        sampler: an ``alignment.sampling.Sampler`` over the stage-1 model.
        pass_rate_fn (`PassRateFn`): ``(record, sample_texts) -> float in [0, 1] | None``.
        k (`int`): samples per prompt.
        params (`SamplingParams`): decoding settings.
    """
    prompts = [prompt_messages(r) for r in records]
    samples = sampler.generate(prompts, k, params)
    rates = []
    for record, group in zip(records, samples):
        rate = pass_rate_fn(record, [s.text for s in group])
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError(f"pass_rate_fn returned {rate} for record {record.get('id')}; expected a value in [0, 1] or None")
        rates.append(rate)
    return rates


def hardness(losses: Sequence[float], rates: Optional[Sequence[Optional[float]]] = None) -> list[float]:
    """Loss percentile in [0, 1], averaged with ``1 - pass_rate`` where a pass rate exists."""
    n = len(losses)
    order = sorted(range(n), key=lambda i: (losses[i], -i))
    pct = [0.0] * n
    for rank, i in enumerate(order):
        pct[i] = rank / max(n - 1, 1)
    if rates is None:
        return pct
    return [p if r is None else (p + 1.0 - r) / 2.0 for p, r in zip(pct, rates)]


def select_hardest(records: Sequence[dict], losses: Sequence[float], n: int, rates: Optional[Sequence[Optional[float]]] = None) -> tuple[list[dict], list[float]]:
    """The ``n`` hardest records (pool order kept among them) and their hardness scores."""
    if len(losses) != len(records) or (rates is not None and len(rates) != len(records)):
        raise ValueError(f"{len(records)} records but {len(losses)} losses / {None if rates is None else len(rates)} pass rates")
    scores = hardness(losses, rates)
    top = sorted(range(len(records)), key=lambda i: (-scores[i], i))[: max(n, 0)]
    top.sort()
    return [records[i] for i in top], [scores[i] for i in top]
