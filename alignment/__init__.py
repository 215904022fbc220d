"""Yi-Lightning post-training library (model, kernels, data, sampling, training stages).

Importing ``alignment`` registers the in-repo model (model_type ``yi_lightning``) with the
transformers Auto classes, so ``AutoModelForCausalLM.from_pretrained(path)`` works on our checkpoints.
"""

import alignment.model  # noqa: F401  (side effect: Auto-class registration)
