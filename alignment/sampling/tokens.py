"""Text side of sampling, shared by every backend so they agree token for token:
prompt rendering (raw text or chat messages -> token ids), end-of-sample detection
(EOS tokens and stop strings) and turning generated ids into a :class:`Sample`.

Conventions (the same as vLLM's, so backends are interchangeable):
- ``Sample.token_ids`` ends with the token that finished the sample (the EOS token, or the
  token that completed a stop string), and ``logprob_sum`` counts it;
- ``Sample.text`` is those ids decoded without special tokens and cut before the first stop
  string, so the stop string itself never appears in the text.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from alignment.sampling.base import Prompt, Sample


def encode_prompts(tokenizer, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt. Raw strings are tokenized as they are (with the tokenizer's own
    special tokens, e.g. BOS); message lists go through the chat template with a generation prompt
    (the template already carries the special tokens, so none are added again)."""
    if isinstance(prompts, (str, dict)):
        raise TypeError("prompts must be a sequence of prompts (strings or message lists), not a single prompt")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids = tokenizer(p, add_special_tokens=True)["input_ids"]
        elif isinstance(p, (list, tuple)) and all(isinstance(m, dict) and "role" in m and "content" in m for m in p):
            text = tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            raise TypeError(
                f"prompt {i} must be a string or a list of {{'role', 'content'}} messages, got {type(p).__name__}: {p!r:.80}"
            )
        if not ids:
            raise ValueError(f"prompt {i} encodes to no tokens: {p!r:.80}")
        out.append(list(ids))
    return out


def eos_token_ids(tokenizer, model=None) -> set[int]:
    """EOS ids from the tokenizer and, when it has one, the model's generation config."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)  # a vLLM-side or bare nn.Module has none
    if gen is not None and gen.eos_token_id is not None:
        ids.update([gen.eos_token_id] if isinstance(gen.eos_token_id, int) else gen.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id and the model's generation_config names none")
    return ids


class StopDetector:
    """Decides, after each new token, whether a sample has ended.

    A stop string completed by the newest token lies in the last ``max_stop_bytes + 1`` tokens
    (every byte-level token holds at least one byte), so only that tail is decoded each step:
    O(stop length) per token instead of re-decoding the whole sample. ``scan`` is the same check
    run after the fact over finished ids (the hf backend), so both backends cut at the same token.
    """

    def __init__(self, tokenizer, stop: Iterable[str], eos_ids: Iterable[int]):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        self.eos_ids = set(eos_ids)
        # +4 tokens of slack: some decoders strip or merge a leading space at the start of a decode.
        self.tail = max((len(s.encode("utf-8")) for s in self.stop), default=0) + 4

    def ended(self, rows: Sequence[Sequence[int]]) -> list[bool]:
        """For each row of generated ids (prompt excluded), whether its last token ends it."""
        done = [bool(r) and r[-1] in self.eos_ids for r in rows]
        if self.stop:
            todo = [i for i, d in enumerate(done) if not d and rows[i]]
            if todo:
                texts = self.tokenizer.batch_decode([rows[i][-self.tail :] for i in todo], skip_special_tokens=True)
                for i, t in zip(todo, texts):
                    done[i] = any(s in t for s in self.stop)
        return done

    def scan(self, ids: Sequence[int]) -> int | None:
        """Number of leading tokens up to and including the one that ends the sample, or None."""
        ids = list(ids)
        first_eos = next((k + 1 for k, t in enumerate(ids) if t in self.eos_ids), None)
        upto = ids if first_eos is None else ids[:first_eos]
        # One full decode rules out most samples; only those that hold a stop string are walked.
        if self.stop and any(s in self.tokenizer.decode(upto, skip_special_tokens=True) for s in self.stop):
            for k in range(1, len(upto) + 1):
                if self.ended([upto[:k]])[0]:
                    return k
        return first_eos

    def finish(self, ids: Sequence[int], logprob_sum: float, ended: bool) -> Sample:
        """Build the Sample for ids that ended (EOS/stop) or ran out of length."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        cut = min((j for j in (text.find(s) for s in self.stop) if j >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        return Sample(text=text, token_ids=[int(t) for t in ids], logprob_sum=float(logprob_sum),
                      finish_reason="stop" if ended else "length")
