"""The step profile's device breakdown on a real CUDA profile: each kernel counted once.

Kineto reports a kernel both as its own entry and as the self device time of the ``aten::`` op that
launched it; the breakdown must count it once, so the categories never add up to more than the
wall time they divide (a known GEMM load lands in the GEMM category, the rest is idle).
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from alignment.train.profile import breakdown, top_kernels


def test_breakdown_of_a_matmul_loop_fits_in_its_wall_time():
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    steps = 20
    for _ in range(3):
        (a @ b).relu_()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            (a @ b).relu_()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t) * 1e3 / steps
    averages = prof.key_averages()
    cats = breakdown(prof, steps, wall_ms, on_device=True, averages=averages)
    busy = sum(ms for cat, ms in cats.items() if not cat.startswith("idle"))
    gemm = cats.get("dense GEMM (projections, router, LM head)", 0.0)
    assert busy <= wall_ms * 1.02, cats
    assert gemm > 0.5 * busy, cats  # the GEMM kernel is named as one, whatever cuBLAS calls it
    top = top_kernels(averages, steps, n=3)
    assert top and top[0][2] == "dense GEMM (projections, router, LM head)", top
