"""The paper's precision settings as ordered per-layer rules (regex, w_bits, a_bits)."""

# Learned step sizes (LSQ, Esser et al. 2020) for weights and inputs instead of the paper's max|W| and
# frozen EMA of batch maxima: below 4 bits a max-abs grid leaves most codes unused (at 2 bits every
# weight under half the channel's max becomes 0).
LSQ = {"w_bound": "lsq", "a_bound": "lsq"}
# The same on an unsigned input grid, for every layer but the stem: their inputs come out of a ReLU, so
# the paper's signed grid for each stage's first conv1 would leave half its codes unused (at 2 bits the
# input of those layers would be binary).
LSQ_RELU = {**LSQ, "a_signed": False}
# Learned step sizes started at the paper's bounds (max|W| per channel, the EMA of the batch max) rather than
# at LSQ's 2 mean|x| / sqrt(qmax), then learned from there: for weights and inputs, or for inputs only.
LSQ_MAX = {**LSQ, "w_lsq_start": "max", "a_lsq_start": "max"}
LSQ_RELU_MAX = {**LSQ_RELU, "w_lsq_start": "max", "a_lsq_start": "max"}
LSQ_AMAX = {**LSQ, "a_lsq_start": "max"}
LSQ_RELU_AMAX = {**LSQ_RELU, "a_lsq_start": "max"}
# Learned steps with kernels on the full two's-complement grid, as LSQ's: -2^(b-1)..2^(b-1)-1, four levels at
# 2 bits where the symmetric grid is ternary.
FULL = {"w_grid": "full"}
LSQ_FULL = {**LSQ, **FULL}
LSQ_RELU_FULL = {**LSQ_RELU, **FULL}
# Kernels' straight-through gradient also beyond the learned bound (APoT's; LSQ's is zero there, so at 2 bits
# the weights past the bound learn only from weight decay).
PASS = {"w_ste": "pass"}
# Kernels standardized per tensor before they are quantized (APoT's weight normalization): the learned bound on a
# fixed scale whatever weight decay does to the kernel. Only where BatchNorm follows (not the head).
STD = {"w_standardize": True}

SETTINGS = {
    "bf16": [(".*", None, None)],
    "w8a8": [(".*", 8, 8)],
    "w4a4": [(".*", 4, 4)],
    # "Mostly 4-bit": stem conv and classifier at 8 bits, the rest at 4.
    "w4a4_ends8": [("stem|head", 8, 8), (".*", 4, 4)],
    # Below 4 bits, stem and head at 8 (the paper's "ends8"), learned step sizes everywhere. Any other
    # mix is a list of rules in the same form, e.g. [("stem|head", 8, 8, LSQ), (".*", 2, 4, LSQ_RELU)] for
    # 2-bit weights and 4-bit inputs.
    "w3a3_ends8": [("stem|head", 8, 8, LSQ), (".*", 3, 3, LSQ_RELU)],
    "w2a2_ends8": [("stem|head", 8, 8, LSQ), (".*", 2, 2, LSQ_RELU)],
    # For integer deployment (`qresnet export`): one activation scale per tensor, which an
    # integer conv applies exactly (the paper's per-input-channel scales cannot be).
    "w8a8_deploy": [(".*", 8, 8, {"a_granularity": "per_tensor"})],
    "w4a4_ends8_deploy": [
        ("stem|head", 8, 8, {"a_granularity": "per_tensor"}),
        (".*", 4, 4, {"a_granularity": "per_tensor"}),
    ],
    # For fused integer deployment (model.fold_bn, qresnet/fused.py): one scale per tensor for the
    # weights too, since BN is folded into them and a fused int8 conv applies one scale. 8-bit
    # activations on the signed grid (codes 0..127 after ReLU, stored as they are): unsigned codes
    # 0..255 would be stored shifted by -128, which costs an explicit padding pass before every 3x3
    # conv and, by our estimate, more float32 rounding in the fused epilogue (a large correction term).
    "w8a8_fused": [(".*", 8, 8, {"a_granularity": "per_tensor", "w_granularity": "per_tensor", "a_signed": True})],
    "w4a4_ends8_fused": [
        ("stem|head", 8, 8, {"a_granularity": "per_tensor", "w_granularity": "per_tensor"}),
        (".*", 4, 4, {"a_granularity": "per_tensor", "w_granularity": "per_tensor"}),
    ],
    # The same with every scale a power of two and each conv's bias on its product's grid (QuantSpec.pow2_scale):
    # cuDNN's fused epilogue is then exact, so the fused integer model gives the fake-quant model's codes to the
    # bit on the GPU too (without it, float32 rounding in another order moves a few codes).
    "w8a8_fused_pow2": [
        (
            ".*",
            8,
            8,
            {"a_granularity": "per_tensor", "w_granularity": "per_tensor", "a_signed": True, "pow2_scale": True},
        )
    ],
    "w4a4_ends8_fused_pow2": [
        ("stem|head", 8, 8, {"a_granularity": "per_tensor", "w_granularity": "per_tensor", "pow2_scale": True}),
        (".*", 4, 4, {"a_granularity": "per_tensor", "w_granularity": "per_tensor", "pow2_scale": True}),
    ],
    # The paper's settings with learned step sizes (LSQ) for weights and inputs.
    "w8a8_lsq": [("stem", 8, 8, LSQ), (".*", 8, 8, LSQ_RELU)],
    "w4a4_ends8_lsq": [("stem|head", 8, 8, LSQ), (".*", 4, 4, LSQ_RELU)],
    "w4a4_ends8_lsq_max": [("stem|head", 8, 8, LSQ_MAX), (".*", 4, 4, LSQ_RELU_MAX)],
    "w3a3_ends8_max": [("stem|head", 8, 8, LSQ_MAX), (".*", 3, 3, LSQ_RELU_MAX)],
    "w2a2_ends8_max": [("stem|head", 8, 8, LSQ_MAX), (".*", 2, 2, LSQ_RELU_MAX)],
    "w3a3_ends8_amax": [("stem|head", 8, 8, LSQ_AMAX), (".*", 3, 3, LSQ_RELU_AMAX)],
    "w2a2_ends8_amax": [("stem|head", 8, 8, LSQ_AMAX), (".*", 2, 2, LSQ_RELU_AMAX)],
    "w4a4_ends8_full": [("stem|head", 8, 8, LSQ_FULL), (".*", 4, 4, LSQ_RELU_FULL)],
    "w3a3_ends8_full": [("stem|head", 8, 8, LSQ_FULL), (".*", 3, 3, LSQ_RELU_FULL)],
    "w2a2_ends8_full": [("stem|head", 8, 8, LSQ_FULL), (".*", 2, 2, LSQ_RELU_FULL)],
    "w2a2_ends8_full_pass": [("stem|head", 8, 8, {**LSQ_FULL, **PASS}), (".*", 2, 2, {**LSQ_RELU_FULL, **PASS})],
    "w2a2_ends8_full_pass_std": [
        ("stem|head", 8, 8, {**LSQ_FULL, **PASS}),
        (".*", 2, 2, {**LSQ_RELU_FULL, **PASS, **STD}),
    ],
    "w3a3_ends8_full_max": [("stem|head", 8, 8, {**LSQ_MAX, **FULL}), (".*", 3, 3, {**LSQ_RELU_MAX, **FULL})],
    "w2a2_ends8_full_amax": [("stem|head", 8, 8, {**LSQ_AMAX, **FULL}), (".*", 2, 2, {**LSQ_RELU_AMAX, **FULL})],
    "w4a4_ends8_lsq_deploy": [
        ("stem|head", 8, 8, {**LSQ, "a_granularity": "per_tensor"}),
        (".*", 4, 4, {**LSQ_RELU, "a_granularity": "per_tensor"}),
    ],
}


PAPER_SETTINGS = ("bf16", "w8a8", "w4a4", "w4a4_ends8")


def apply(config, setting: str):
    """Sets config.setting and config.quant.rules to a named setting."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {sorted(SETTINGS)}")
    config.setting = setting
    config.quant.rules = list(SETTINGS[setting])
    return config
