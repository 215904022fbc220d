"""Where a training step's time goes, in any stage: ``YIALIGN_PROFILE=1`` profiles a few steps.

Every trainer of the project (base, SFT, reward, DPO) takes :func:`profile_callbacks`. With the
environment variable ``YIALIGN_PROFILE`` set (``1``, or ``wait,active`` step counts such as
``5,3``), :class:`StepProfiler` runs ``torch.profiler`` over ``active`` optimizer steps after
``wait`` steps of warm-up (compiles, allocator) and writes ``profile.txt`` into the stage's
folder (:func:`profile_path`): wall time per step, the step's device (or CPU) time by category
(:func:`category`: our Triton kernels, FlexAttention, GEMMs, routing, optimizer, elementwise),
the time no kernel covers ("idle": host overhead, syncs, launch gaps), the ops with the most
self time, and TorchDynamo's compile counters (a recompile per batch shape shows up there).
Unset, it costs nothing::

    YIALIGN_PROFILE=1 python -m alignment pipeline=h100_small run_dir=/tmp/runs/p
    cat /tmp/runs/p/*/profile*.txt

``bench/train_step.py`` uses the same categories for its synthetic step.

Tests: ``python -m pytest -q tests/train/test_profile.py``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from transformers import TrainerCallback

log = logging.getLogger(__name__)

ENV = "YIALIGN_PROFILE"

# (category, pattern over kernel / operator names), first match wins
CATEGORIES = [
    ("MoE experts", r"_gate_up_fwd|_mm_scatter|_down_bwd|_wgrad|grouped_mm|grouped_gemm|moe"),
    ("attention", r"flex|attention|sdpa|flash|fmha|_efficient_attention|triton_tem"),
    ("RMSNorm", r"_rms_|rms_norm|rmsnorm"),
    ("cross-entropy", r"_ce_fwd|_ce_bwd|cross_entropy|log_softmax|nll_loss"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("routing / permutation", r"topk|sort|scatter|gather|index|cumsum|histc|bincount|nonzero|argsort|where"),
    # nvjet: cuBLAS's GEMM kernels on Hopper (nvjet_hsh_..., nvjet_tst_...)
    ("dense GEMM (projections, router, LM head)", r"gemm|cutlass|xmma|sm90|nvjet|cublas|matmul|::mm|::bmm|addmm|linear"),
]


def category(name: str) -> str:
    """The :data:`CATEGORIES` entry a kernel or operator name falls in."""
    low = name.lower()
    for cat, pat in CATEGORIES:
        if re.search(pat, low):
            return cat
    return "other (elementwise, copies)"


def _is_device_work(e) -> bool:
    """Whether a profiler entry is a kernel (or copy, memset) on the device, counted once.

    Kineto lists each kernel twice: as its own entry (device type CUDA, named by the kernel) and
    inside the ``aten::`` operator that launched it, whose ``self_device_time_total`` is that same
    kernel time. Counting both doubled every launched kernel (and shrank "idle" to what was left), so
    only the device entries count, as in torch's own table total; user annotations
    (``record_function`` ranges, ``ProfilerStep#``) are spans over kernels, not kernels.
    """
    if getattr(e, "is_user_annotation", False):
        return False
    if e.device_type == DeviceType.CPU:
        return bool(getattr(e, "is_legacy", False))  # the legacy profiler kept each kernel on its CPU event
    return True


def breakdown(prof, steps: int, wall_ms_per_step: float, on_device: bool, averages=None) -> dict[str, float]:
    """Milliseconds per step by :func:`category` from a finished profiler, plus the uncovered rest.

    ``averages`` is ``prof.key_averages()`` when the caller has it already (it is slow to build).

    On a device: self device time per kernel; the rest of the wall time is "idle (no kernel
    running)". On CPU: self CPU time of ``aten::`` operators; the rest is "not in aten ops".
    """
    by_cat: dict[str, float] = defaultdict(float)
    for e in (averages if averages is not None else prof.key_averages()):
        if on_device:
            us = e.self_device_time_total if _is_device_work(e) else 0
        else:
            us = e.self_cpu_time_total if e.key.startswith("aten::") else 0
        if us > 0:
            by_cat[category(e.key)] += us / 1e3 / steps
    busy = sum(by_cat.values())
    rest = "idle (no kernel running)" if on_device else "not in aten ops"
    by_cat[rest] = max(wall_ms_per_step - busy, 0.0)
    return dict(by_cat)


def top_kernels(averages, steps: int, n: int = 15) -> list[tuple[str, float, str]]:
    """The ``n`` device entries (kernels, copies) with the most device time: (name, ms per step, category)."""
    rows = [(e.key, e.self_device_time_total / 1e3 / steps, category(e.key)) for e in averages if _is_device_work(e)]
    return sorted(rows, key=lambda r: -r[1])[:n]


def _parse(value: str) -> tuple[int, int]:
    if value.strip() in ("1", "true", "yes", "on"):
        return 3, 3
    try:
        wait, active = (int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"{ENV}={value!r}: expected 1 or 'wait,active' step counts such as '5,3'") from None
    if wait < 0 or active < 1:
        raise ValueError(f"{ENV}={value!r}: wait must be >= 0 and active >= 1")
    return wait, active


def profile_path(output_dir) -> Path:
    """Where the profile of a trainer writing to ``output_dir`` goes.

    A stage's trainer checkpoints live under ``<stage>/checkpoints/`` and are deleted when the stage
    completes, so a profile goes beside that folder: ``<stage>/profile.txt``, or
    ``<stage>/profile_<sub>.txt`` for a trainer in ``checkpoints/<sub>`` (the reward stage's phases,
    online DPO's rounds). Elsewhere it is ``<output_dir>/profile.txt``.
    """
    out = Path(output_dir)
    parts = out.parts
    if "checkpoints" not in parts:
        return out / "profile.txt"
    i = len(parts) - 1 - parts[::-1].index("checkpoints")
    return Path(*parts[:i]) / ("_".join(["profile", *parts[i + 1:]]) + ".txt")


def profile_callbacks() -> list:
    """``[StepProfiler(...)]`` when ``YIALIGN_PROFILE`` is set (and not 0), else ``[]``."""
    value = os.environ.get(ENV, "").strip()
    if value in ("", "0", "false", "no", "off"):
        return []
    return [StepProfiler(*_parse(value))]


class StepProfiler(TrainerCallback):
    """Profiles optimizer steps ``wait+1 .. wait+active`` of a run and writes ``profile.txt``.

    Args:
        wait (`int`): steps left unprofiled first (warm-up).
        active (`int`): steps profiled.
        top (`int`): ops listed by self time.
    """

    def __init__(self, wait: int = 3, active: int = 3, top: int = 25):
        self.wait, self.active, self.top = wait, active, top
        self._prof = None
        self._start_step: int | None = None
        self._t0 = 0.0
        self.path: Path | None = None

    def _sync(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_step = state.global_step + self.wait  # after a resume, counts from there

    def on_step_begin(self, args, state, control, **kwargs):
        if self._prof is None and self._start_step is not None and state.global_step == self._start_step:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._sync()
            self._prof = profile(activities=acts)
            self._prof.__enter__()
            self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._prof is not None and state.global_step >= self._start_step + self.active:
            self._finish(args, state, state.global_step - self._start_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self._prof is not None:  # the run ended inside the window
            self._finish(args, state, max(state.global_step - self._start_step, 1))

    def _finish(self, args, state, steps: int) -> None:
        self._sync()
        wall_ms = (time.perf_counter() - self._t0) * 1e3 / steps
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        on_device = torch.cuda.is_available()
        averages = prof.key_averages()  # seconds for a step of a 30-layer model: build it once
        cats = breakdown(prof, steps, wall_ms, on_device, averages)
        sort_key = "self_cuda_time_total" if on_device else "self_cpu_time_total"
        lines = [f"{steps} optimizer steps from step {self._start_step}: {wall_ms:.1f} ms/step wall (under the profiler)",
                 "", f"{'category':45s} {'ms/step':>9s} {'share':>6s}"]
        for cat, ms in sorted(cats.items(), key=lambda kv: -kv[1]):
            lines.append(f"{cat:45s} {ms:9.2f} {100 * ms / max(wall_ms, 1e-9):5.1f}%")
        lines += ["", f"ops by {sort_key} ({steps} steps):",
                  averages.table(sort_by=sort_key, row_limit=self.top, max_name_column_width=70)]
        if on_device:
            lines += ["ops by self_cpu_time_total (host side):",
                      averages.table(sort_by="self_cpu_time_total", row_limit=self.top, max_name_column_width=70)]
        try:
            from torch._dynamo.utils import counters

            lines += ["TorchDynamo counters (whole process so far):",
                      *(f"  {group}: {dict(counters[group])}" for group in ("stats", "frames", "recompiles")
                        if counters.get(group))]
        except ImportError:  # pragma: no cover - a torch without dynamo
            pass
        if not state.is_world_process_zero:  # every rank profiles its own steps; rank 0 writes
            return
        self.path = profile_path(args.output_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        log.info("profile of %d steps (%.1f ms/step) written to %s", steps, wall_ms, self.path)
