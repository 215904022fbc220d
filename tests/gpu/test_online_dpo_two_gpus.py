"""Online DPO on 2 GPUs (``stage.dpo_r1.accelerate=ddp``, one rank per card): the 2-rank checks of
tests/multigpu/test_online_dpo_ranks.py (every prompt sampled once by the rank its pool index
strides to, per-prompt seeds that no two ranks share, candidates in pool order, one pairs file, one
publish by rank 0, a trained model), on the tiny MoE with NCCL. The sample-for-sample comparison
with one process is left out: on a GPU the fused MoE's atomic adds may flip a draw between runs.

Run: python -m pytest -q -m gpu tests/gpu/test_online_dpo_two_gpus.py   (needs 2 CUDA devices; not run yet)
"""

from __future__ import annotations

import pytest
import torch

from tests.multigpu.test_online_dpo_ranks import check_two_rank_round


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_online_dpo_round_on_two_gpus(tmp_path, tiny_model, tiny_tokenizer, capfd):
    check_two_rank_round(tmp_path, tiny_model, tiny_tokenizer, capfd, accelerate="ddp", device="cuda", exact=False)
