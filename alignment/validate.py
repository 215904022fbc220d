"""Range checks of config values: sizes, counts, rates and fractions, before any stage runs.

The stage schemas (dataclasses) fix the *types* of their fields (OmegaConf rejects ``seed=abc``);
this module fixes their *ranges*, by field name, across every schema at once: a batch size or a
learning rate is the same thing in the base, SFT, DPO and reward stages. :func:`check_values`
walks a typed stage config (nested dataclasses, lists and dicts) and raises
:class:`alignment.errors.ConfigError` naming the first bad value, e.g.
``stage.base.max_steps=-5: must be >= 0 (0 builds and saves the model without training)``.

``None`` always passes (it means "not set" wherever a field allows it). A rule for one schema
only is keyed ``"<Class>.<field>"`` and wins over the plain field name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from alignment.errors import ConfigError

Rule = tuple[Callable[[float], bool], str]

_POS: Rule = (lambda v: v > 0, "must be > 0")
_NONNEG: Rule = (lambda v: v >= 0, "must be >= 0")
_UNIT_OPEN: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")
_UNIT: Rule = (lambda v: 0 <= v <= 1, "must be in [0, 1]")
_PROB: Rule = (lambda v: 0 < v <= 1, "must be in (0, 1]")
_STEPS: Rule = (lambda v: v >= -1, "must be -1 (let num_train_epochs decide) or >= 0")

RULES: dict[str, Rule] = {
    **dict.fromkeys((
        "per_device_train_batch_size", "gradient_accumulation_steps", "batch_size", "logprob_batch_size",
        "precompute_ref_batch_size", "max_batch_size", "max_prompts_per_batch", "learning_rate", "beta",
        "num_train_epochs", "seq_len", "max_length", "max_new_tokens", "pass_rate_max_new_tokens", "max_model_len",
        "max_tokens", "step_tokens", "rollout_tokens", "vocab_size", "logging_steps", "save_steps",
        "save_total_limit", "n_samples", "num_samples", "pass_rate_k", "rounds", "num_children", "num_simulations",
        "max_depth", "workers", "verify_workers", "batch_problems", "code_timeout_s", "ngram", "min_tokens",
        "target_count", "size", "max_rows", "max_pairs", "pool_per_source", "expand_to", "n", "r", "alpha",
        "tensor_parallel_size", "data_parallel_size", "max_chars_per_source", "tokenizer_max_chars_per_source",
        "num_threads", "sft_size", "max_row_bytes", "pass_k", "per_prompt",
    ), _POS),
    **dict.fromkeys((
        "weight_decay", "max_grad_norm", "warmup_steps", "eval_blocks", "calibrate_router_blocks", "kl_samples",
        "max_heldout_pairs", "inspect_max_prompts", "min_gap", "min_pair_gap", "weight", "count", "temperature",
        "rollout_temperature", "max_wall_s", "stop_after_solutions", "c_puct", "verifier_bonus", "sft_weight",
        "router_aux_loss_coef", "seed", "cpu_threads", "max_sft_per_problem",
    ), _NONNEG),
    "warmup_ratio": _UNIT_OPEN,
    "eval_fraction": _UNIT_OPEN,
    "dropout": _UNIT_OPEN,
    "top_p": _PROB,
    "gpu_memory_utilization": _PROB,
    "reference_p_correct": _UNIT,
    "max_steps": _STEPS,
    "eval_steps": (lambda v: v >= -1, "must be -1 (no evaluation), 0 (once per epoch) or > 0"),
    "BaseConfig.max_steps": (lambda v: v >= 0, "must be >= 0 (0 builds and saves the model without training)"),
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(name: str, owner: str, value: Any, where: str) -> None:
    rule = RULES.get(f"{owner}.{name}") or RULES.get(name)
    if rule is None:
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is None or not _number(v):
            continue
        ok, message = rule
        if math.isnan(v) or not ok(v):
            raise ConfigError(f"{where}={value}: {message}")


def check_values(obj: Any, where: str, owner: str = "") -> None:
    """Raise :class:`ConfigError` for the first value of ``obj`` (a dataclass, dict or list) out of range.

    Args:
        obj (`Any`): a typed stage config, or any nesting of dataclasses, dicts and lists.
        where (`str`): the config path of ``obj`` for the message (e.g. ``stage.base``).
        owner (`str`, *optional*): class name for ``obj``'s own fields when it is a dict.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj).__name__
        for f in dataclasses.fields(obj):
            _visit(f.name, cls, getattr(obj, f.name), f"{where}.{f.name}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _visit(str(k), owner, v, f"{where}.{k}")


def _visit(name: str, owner: str, value: Any, where: str) -> None:
    if dataclasses.is_dataclass(value) or isinstance(value, dict):
        check_values(value, where)
    elif isinstance(value, (list, tuple)) and any(dataclasses.is_dataclass(v) or isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            check_values(v, f"{where}[{i}]")
    else:
        _check(name, owner, value, where)
