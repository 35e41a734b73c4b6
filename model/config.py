"""TransformerConfig: the hyper-parameters of the network, and nothing about training."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "splash")
# cuDNN's flash attention runs on NVIDIA GPUs of compute capability 8.0 (Ampere) and newer.
CUDNN_MIN_COMPUTE_CAPABILITY = (8, 0)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes and switches of the encoder-decoder Transformer (Vaswani et al. 2017).

    Defaults are the paper's base model. `configs/*.py` holds the named setups; training
    builds this from `config.model` with `TransformerConfig.from_mapping`.
    """

    vocab_size: int = 37000  # shared source+target vocabulary (id 0 = padding)
    d_model: int = 512  # width of embeddings and of every residual stream
    num_heads: int = 8  # attention heads h
    head_dim: int = 64  # d_k = d_v per head (paper: d_model / h)
    d_ff: int = 2048  # hidden width of the position-wise feed-forward network
    num_encoder_layers: int = 6  # N for the encoder
    num_decoder_layers: int = 6  # N for the decoder
    dropout_rate: float = 0.1  # P_drop on embeddings and on every sub-layer output
    attention_dropout_rate: float = 0.0  # dropout on the attention weights
    relu_dropout_rate: float = 0.0  # dropout on the feed-forward hidden activations
    max_length: int = 256  # longest position the model can embed
    position_embedding: str = "sinusoidal"  # 'sinusoidal' (paper) or 'learned'
    norm_position: str = "post"  # 'post' (paper: LayerNorm(x + Sublayer(x))) or 'pre'
    share_embeddings: bool = True  # one embedding table for source and target
    tie_output_projection: bool = True  # output softmax weights = target embedding
    layer_norm_epsilon: float = 1e-6  # epsilon of every LayerNorm
    dtype: str = "float32"  # compute dtype of activations: 'float32' or 'bfloat16'
    param_dtype: str = "float32"  # storage dtype of parameters
    remat: bool = False  # recompute each layer's activations in the backward pass
    # 'xla' (any device), 'cudnn' (fused flash attention on NVIDIA GPUs; bfloat16) or 'splash'
    # (Pallas kernel on TPUs); neither fused kernel has attention dropout. Configs may also say
    # 'auto', which `resolve_attention_implementation` turns into one of these for the platform.
    attention_implementation: str = "xla"

    def __post_init__(self) -> None:
        checks = {
            "position_embedding must be 'sinusoidal' or 'learned'": self.position_embedding
            in ("sinusoidal", "learned"),
            "norm_position must be 'post' or 'pre'": self.norm_position in ("post", "pre"),
            "dtype must be 'float32' or 'bfloat16'": self.dtype in ("float32", "bfloat16"),
            f"attention_implementation must be one of {ATTENTION_IMPLEMENTATIONS} (configs may "
            "also say 'auto')": self.attention_implementation in ATTENTION_IMPLEMENTATIONS,
            f"attention_implementation={self.attention_implementation!r} has no dropout on the "
            "attention weights: set attention_dropout_rate=0, or attention_implementation='xla' "
            "(or 'auto', which then picks XLA)": self.attention_implementation == "xla"
            or self.attention_dropout_rate == 0.0,
            "attention_implementation='cudnn' computes in bfloat16: set dtype='bfloat16' (or "
            "'auto'), or attention_implementation='xla'": self.attention_implementation != "cudnn"
            or self.dtype == "bfloat16",
            "attention_implementation='cudnn' needs head_dim a multiple of 8 and at most 128": (
                self.attention_implementation != "cudnn"
                or (self.head_dim % 8 == 0 and self.head_dim <= 128)
            ),
            "param_dtype must be 'float32' or 'bfloat16'": self.param_dtype
            in ("float32", "bfloat16"),
            "d_model must be even (sinusoidal positions pair sin and cos)": self.d_model % 2 == 0,
            "vocab_size, d_model, num_heads, head_dim, d_ff and max_length must be positive": min(
                self.vocab_size,
                self.d_model,
                self.num_heads,
                self.head_dim,
                self.d_ff,
                self.max_length,
            )
            > 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"Bad model config: {message}.")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> TransformerConfig:
        """Builds the config from `config.model`, rejecting keys it does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"Unknown model config key(s) {unknown}; known keys are {sorted(known)}. "
                "Check the spelling in your config file or --config.model.* flag."
            )
        return cls(**dict(fields))


def choose_attention_implementation(
    requested: str,
    *,
    platform: str,  # 'cpu', 'tpu', 'cuda' (NVIDIA GPU) or 'rocm' (AMD GPU)
    compute_capability: str | None,  # NVIDIA GPUs: e.g. '9.0'
    dtype: str,  # resolved compute dtype
    head_dim: int,
    attention_dropout_rate: float,
) -> tuple[str, str]:
    """(implementation, why) for `requested` ('auto', 'xla', 'cudnn' or 'splash') on `platform`.

    'auto' picks the fused kernel of the platform when the model can use it, else XLA. An
    explicit fused kernel on a platform that lacks it falls back to XLA (so that, e.g., a
    checkpoint trained with 'cudnn' translates on a CPU); one the model cannot use (attention
    dropout, float32 for cuDNN) is left for TransformerConfig to reject.
    """
    if requested not in ("auto", *ATTENTION_IMPLEMENTATIONS):
        raise ValueError(
            f"Bad model config: attention_implementation must be 'auto' or one of "
            f"{ATTENTION_IMPLEMENTATIONS}, got {requested!r}."
        )
    cudnn_ok = (
        platform == "cuda"
        and compute_capability is not None
        and tuple(int(part) for part in compute_capability.split(".")[:2])
        >= CUDNN_MIN_COMPUTE_CAPABILITY
    )
    if requested == "xla":
        return "xla", "as configured"
    if requested == "cudnn" and not cudnn_ok:
        return "xla", (
            f"'cudnn' needs an NVIDIA GPU of compute capability >= 8.0; this process runs on "
            f"{platform}" + (f" {compute_capability}" if compute_capability else "")
        )
    if requested == "splash" and platform != "tpu":
        return "xla", f"'splash' needs a TPU; this process runs on {platform}"
    if requested != "auto":
        return requested, "as configured"
    if attention_dropout_rate > 0:
        return "xla", "attention_dropout_rate > 0 and the fused kernels have no attention dropout"
    if platform == "tpu":
        return "splash", "TPU: Pallas splash attention with segment ids"
    if not cudnn_ok:
        return "xla", f"no fused kernel for {platform}" + (
            f" (compute capability {compute_capability} < 8.0)" if platform == "cuda" else ""
        )
    if dtype != "bfloat16":
        return "xla", f"cuDNN's fused attention needs bfloat16, the model computes in {dtype}"
    if head_dim % 8 or head_dim > 128:
        return "xla", f"cuDNN's fused attention needs head_dim % 8 == 0 and <= 128, not {head_dim}"
    return "cudnn", "NVIDIA GPU: cuDNN flash attention with the segments as its mask"


def resolve_attention_implementation(fields: Mapping[str, Any], platform: str | None = None) -> str:
    """config.model's attention_implementation (maybe 'auto') -> the one this process uses on
    `platform` ('cpu', 'gpu' or 'tpu', as `jax.default_backend()` names them; default: that
    backend); logs the choice.

    `fields` needs the resolved compute dtype. Called at start-up by
    training.configuration.model_config.
    """
    platform = platform or jax.default_backend()
    compute_capability = None
    if platform == "gpu":
        try:
            device = jax.local_devices(backend="gpu")[0]
        except RuntimeError:  # asked about a GPU this process cannot see: no fused kernel
            device = None
        if device is not None:
            is_cuda = "cuda" in device.client.platform_version.lower()
            platform = "cuda" if is_cuda else "rocm"
            compute_capability = getattr(device, "compute_capability", None) if is_cuda else None
    defaults = TransformerConfig()
    requested = fields.get("attention_implementation", defaults.attention_implementation)
    implementation, why = choose_attention_implementation(
        requested,
        platform=platform,
        compute_capability=compute_capability,
        dtype=fields.get("dtype", defaults.dtype),
        head_dim=fields.get("head_dim", defaults.head_dim),
        attention_dropout_rate=fields.get(
            "attention_dropout_rate", defaults.attention_dropout_rate
        ),
    )
    fell_back = implementation == "xla" and requested in ("cudnn", "splash")
    (logging.warning if fell_back else logging.info)(
        "Attention: %s (requested %r: %s).", implementation, requested, why
    )
    return implementation
