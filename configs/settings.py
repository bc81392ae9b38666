"""The paper's precision settings as ordered per-layer rules (regex, w_bits, a_bits)."""

SETTINGS = {
    "bf16": [(".*", None, None)],
    "w8a8": [(".*", 8, 8)],
    "w4a4": [(".*", 4, 4)],
    # "Mostly 4-bit": stem conv and classifier at 8 bits, the rest at 4.
    "w4a4_ends8": [("stem|head", 8, 8), (".*", 4, 4)],
}


def apply(config, setting: str):
    """Sets config.setting and config.quant.rules to a named setting."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {sorted(SETTINGS)}")
    config.setting = setting
    config.quant.rules = list(SETTINGS[setting])
    return config
