"""The MoE load-balancing loss in every trainer: one function adds it, one mixin logs it.

Our model returns its own balance loss as ``outputs.aux_loss`` (the report's
a_ST*L_ST + a_EP*L_EP + a_PEP*L_PEP, already weighted by the model config). TRL's trainers either
drop it (``RewardTrainer``, ``SFTTrainer`` with a custom loss) or rebuild Mixtral's Switch loss
from router logits (``DPOTrainer``'s fused head), so every trainer of this project subclasses the
TRL one with :class:`MoEAuxLossMixin` first::

    class MoESFTTrainer(MoEAuxLossMixin, SFTTrainer): ...

and adds the loss in its public ``compute_loss`` through :meth:`MoEAuxLossMixin.add_aux_loss`.
The mixin keeps the values of each micro-batch and writes their mean into every log line (train
lines as ``<aux_log_key>``, evaluation lines as ``eval_<aux_log_key>``), the way TRL logs its
own per-step metrics. Only public ``Trainer`` methods are overridden (``log``).

Tests: ``python -m pytest -q tests/train/test_args.py``.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def add_aux_loss(loss: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
    """``loss + aux`` in ``loss``'s dtype; ``loss`` itself when ``aux`` is None (a dense model)."""
    return loss if aux is None else loss + aux.to(loss.dtype)


class MoEAuxLossMixin:
    """Adds the model's MoE balance loss to a trainer's loss and logs its mean (and other MoE numbers).

    Attributes:
        aux_log_key (`str`): log name of the aux loss (``aux_loss``; the DPO trainer uses
            ``moe_aux_loss``, as TRL's own DPO term is already logged as ``aux_loss``).
        moe_logs (`dict[str, dict[str, list]]`): values (floats or 0-d tensors) since the last log line, per mode
            (``train``/``eval``) and name.
    """

    aux_log_key = "aux_loss"

    def __init__(self, *args, **kwargs):
        self.moe_logs: dict[str, dict[str, list]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        super().__init__(*args, **kwargs)

    def log_moe(self, name: str, value: float | torch.Tensor, training: bool) -> None:
        """Keep ``value`` for the mean written into the next log line of its mode.

        A tensor stays a (detached) tensor until that line is written: reading it now (``float``,
        ``.item()``) would make the host wait for the forward pass between the forward and the
        backward of every step, a pipeline bubble per value per step.
        """
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self.moe_logs["train" if training else "eval"][name].append(value)

    def add_aux_loss(self, loss: torch.Tensor, aux: torch.Tensor | None, training: bool) -> torch.Tensor:
        """``loss`` plus the model's aux loss (:func:`add_aux_loss`), which is also logged."""
        if aux is not None:
            self.log_moe(self.aux_log_key, aux, training)
        return add_aux_loss(loss, aux)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "" if mode == "train" else "eval_"
        logs.update({f"{prefix}{k}": _mean(v) for k, v in self.moe_logs[mode].items() if v})
        self.moe_logs[mode].clear()
        super().log(logs, start_time)


def _mean(values: list) -> float:
    """Mean of floats and 0-d tensors; the tensors are read in one host sync."""
    tensors = [v.float().reshape(()) for v in values if isinstance(v, torch.Tensor)]
    total = float(torch.stack([t.to(tensors[0].device) for t in tensors]).sum()) if tensors else 0.0
    return (total + sum(float(v) for v in values if not isinstance(v, torch.Tensor))) / len(values)
