"""Shared pytest fixtures. Each area keeps its fixtures in its own module, imported here.

On a machine without CUDA, Triton kernels run under the interpreter (TRITON_INTERPRET=1).
The whole suite runs torch with one intra-op thread (and tells subprocesses the same): the
tiny models' ops are too small to gain from threads, and on a busy 2-core box two OpenMP
threads per process made a training step 20-30x slower.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Converted GGUF checkpoints (alignment/model/upcycle.py) go to a folder of this test session,
# not the user's ~/.cache; tests of the cache itself point it at their own tmp_path.
if "YIALIGN_GGUF_CACHE" not in os.environ:
    import tempfile

    os.environ["YIALIGN_GGUF_CACHE"] = tempfile.mkdtemp(prefix="yialign-gguf-cache-")

import torch  # noqa: E402

torch.set_num_threads(1)
if not torch.cuda.is_available():
    # Kernel modules read TRITON_INTERPRET when first imported, and the fixtures below import the
    # model (hence the kernels) before tests/kernels/conftest.py runs: set it here, first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.fixtures_model import *  # noqa: F401,F403,E402  (tiny_config, tiny_model: owned by the model area)
from tests.fixtures_tokenizer import *  # noqa: F401,F403,E402  (tiny_tokenizer: owned by the tokenizer area)
