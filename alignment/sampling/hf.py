"""The ``hf`` backend: ``transformers`` ``model.generate(num_return_sequences=n)``, the baseline
the native sampler is measured against (bench/sampling.py) and checked against (tests/sampling).

It batches prompts with left padding, lets ``generate`` expand each prompt ``n`` times (so every
sample re-runs the prompt's prefill: ``generate`` repeats the inputs, not a cache), and records
each chosen token's log-probability under the unmodified model distribution with a logits
processor that runs before the temperature / top-k / top-p warpers (transformers merges user
processors ahead of the warpers). Keeping only the chosen token's log-prob avoids holding
``output_logits`` ([rows, steps, vocab] floats) for the whole generation.

    sampler = build_sampler({"backend": "hf"}, model, tokenizer)
    samples = sampler.generate(["2+2="], n=4, params=SamplingParams(max_new_tokens=8))
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from tqdm.auto import tqdm

from alignment.sampling.base import Prompt, Sample, SamplingParams
from alignment.sampling.batching import check_params, left_pad, one_call_per_prompt, plan_batches
from alignment.sampling.model_sampler import ModelSampler
from alignment.sampling.tokens import StopDetector, encode_prompts


class _ChosenTokenLogprobs(LogitsProcessor):
    """Records log p(chosen token) under the raw logits, one step late: at step t it sees the
    token chosen at step t-1 (the last column of ``input_ids``) and the raw scores of step t."""

    def __init__(self):
        self.prev_logp_BV: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev_logp_BV is not None:
            self.steps.append(self.prev_logp_BV.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev_logp_BV = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def logprobs(self, sequences: torch.LongTensor) -> torch.Tensor:
        """[rows, generated] log-probs, the last step gathered from the final sequences."""
        last = self.prev_logp_BV.gather(1, sequences[:, -1:]).squeeze(1)
        return torch.stack([*self.steps, last], dim=1)


class HFSampler(ModelSampler):
    """Sampler over any ``transformers`` causal LM through ``generate``."""

    # no_grad, not inference_mode: inference tensors have no version counter, which the GPU
    # attention kernel's block-mask cache reads (alignment/kernels/attention.py).
    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[list[Sample]]:
        if params.seeds is not None:  # generate() draws a batch from one stream
            return one_call_per_prompt(self, prompts, n, params)
        check_params(n, params)
        ids = encode_prompts(self.tokenizer, prompts)
        detector = StopDetector(self.tokenizer, params.stop, self.eos_ids)
        out: list[list[Sample]] = [[] for _ in ids]
        batches = plan_batches([len(p) for p in ids], n, self.cfg)
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; the caller's mode is restored after
        try:
            self._generate(ids, n, params, detector, batches, out)
        finally:
            self.model.train(was_training)
        return out

    def _generate(self, ids, n, params, detector, batches, out) -> None:
        for b, idx in enumerate(tqdm(batches, desc="hf sampling", unit="batch", disable=len(batches) < 2)):
            input_ids, attention_mask = left_pad([ids[i] for i in idx], self.pad_id, self.device)
            recorder = _ChosenTokenLogprobs()
            greedy = params.temperature == 0
            # generate refuses greedy search with num_return_sequences > 1; greedy samples are all
            # the same, so one is decoded and copied n times.
            reps = 1 if greedy else n
            kwargs = dict(
                max_new_tokens=params.max_new_tokens,
                do_sample=not greedy,
                num_return_sequences=reps,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
                logits_processor=LogitsProcessorList([recorder]),
                return_dict_in_generate=True,
            )
            if not greedy:
                # top_k=0 must be explicit: generation configs often default to top_k=50.
                kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if params.stop:
                kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                if params.seed is not None:
                    torch.manual_seed(params.seed * 1_000_003 + b)
                res = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            gen = res.sequences[:, input_ids.shape[1] :]
            logp = recorder.logprobs(res.sequences).cpu()
            gen_rows = gen.tolist()
            for r, row in enumerate(gen_rows):
                end = detector.scan(row)
                keep = len(row) if end is None else end
                sample = detector.finish(row[:keep], logp[r, :keep].sum().item(), ended=end is not None)
                out[idx[r // reps]].extend(copy.deepcopy(sample) for _ in range(n // reps))
