"""YIALIGN_PROFILE: a trainer profiles a window of optimizer steps and writes profile.txt."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from types import SimpleNamespace

from torch.autograd import DeviceType

from alignment.train.profile import ENV, StepProfiler, breakdown, category, profile_callbacks, profile_path


class _Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.lin(x).squeeze(-1), y)}


def _train(tmp_path, callbacks, max_steps=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    ds = Dataset.from_dict({"x": x.tolist(), "y": x.sum(-1).tolist()})
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4,
                             use_cpu=True, report_to=[], save_strategy="no", logging_steps=100, disable_tqdm=True)
    trainer = Trainer(model=_Regressor(), args=args, train_dataset=ds, callbacks=callbacks)
    trainer.train()
    return tmp_path / "out" / "profile.txt"


def test_unset_or_zero_adds_nothing(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert profile_callbacks() == []
    monkeypatch.setenv(ENV, "0")
    assert profile_callbacks() == []


def test_window_from_env_and_bad_value(monkeypatch):
    monkeypatch.setenv(ENV, "2,4")
    (cb,) = profile_callbacks()
    assert (cb.wait, cb.active) == (2, 4)
    monkeypatch.setenv(ENV, "two")
    with pytest.raises(ValueError, match="YIALIGN_PROFILE='two'"):
        profile_callbacks()


def test_writes_profile_of_the_window(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "2,3")
    cbs = profile_callbacks()
    path = _train(tmp_path, cbs)
    assert cbs[0].path == path and path.is_file()
    text = path.read_text()
    assert text.startswith("3 optimizer steps from step 2:")
    assert "ms/step" in text and "not in aten ops" in text
    assert "aten::addmm" in text or "aten::linear" in text  # the model's matmul is in the op table


def test_run_shorter_than_window_still_writes(tmp_path):
    cb = StepProfiler(wait=1, active=10)
    path = _train(tmp_path, [cb], max_steps=3)
    assert path.read_text().startswith("2 optimizer steps from step 1:")


def test_categories():
    assert category("_gate_up_fwd_kernel") == "MoE experts"
    assert category("aten::_flex_attention") == "attention"
    assert category("sm90_xmma_gemm_bf16") == "dense GEMM (projections, router, LM head)"
    assert category("aten::add_") == "other (elementwise, copies)"
    assert category("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NNT") == "dense GEMM (projections, router, LM head)"


def _entry(key, device_type, self_device_us, annotation=False):
    return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=self_device_us,
                           self_cpu_time_total=0, is_user_annotation=annotation, is_legacy=False)


def test_device_breakdown_counts_each_kernel_once():
    # What kineto's key_averages() holds for one aten::mm and one aten::mul on a GPU: each kernel as
    # its own device entry and again as the self device time of the CPU op that launched it, plus a
    # user annotation spanning both, over 2 steps of 10 ms wall each.
    entries = [
        _entry("aten::mm", DeviceType.CPU, 3000), _entry("nvjet_hsh_128x256_64x4", DeviceType.CUDA, 3000),
        _entry("aten::mul", DeviceType.CPU, 1000),
        _entry("void at::native::vectorized_elementwise_kernel<4, MulFunctor>", DeviceType.CUDA, 1000),
        _entry("ProfilerStep#3", DeviceType.CUDA, 4000, annotation=True),
        _entry("_gate_up_fwd_kernel", DeviceType.CUDA, 2000),  # a Triton kernel: no aten op around it
    ]
    cats = breakdown(None, steps=2, wall_ms_per_step=10.0, on_device=True, averages=entries)
    assert cats["dense GEMM (projections, router, LM head)"] == pytest.approx(1.5)
    assert cats["other (elementwise, copies)"] == pytest.approx(0.5)
    assert cats["MoE experts"] == pytest.approx(1.0)
    assert cats["idle (no kernel running)"] == pytest.approx(10.0 - 3.0)


def test_profile_goes_beside_the_pruned_checkpoints(tmp_path):
    stage = tmp_path / "run" / "reward"
    assert profile_path(stage / "checkpoints") == stage / "profile.txt"
    assert profile_path(stage / "checkpoints" / "pretrain") == stage / "profile_pretrain.txt"
    assert profile_path(tmp_path / "out") == tmp_path / "out" / "profile.txt"
