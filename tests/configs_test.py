"""Every config file loads, locks, resolves its rules, and every sweep expands."""

from pathlib import Path

import pytest

from qresnet import config_lib, run_spec, sweep

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.py") if "def get_config" in p.read_text())
SWEEPS = [p for p in CONFIGS if "def get_sweep" in p.read_text()]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads_and_resolves(path):
    cfg = config_lib.load_config(path)
    assert cfg.is_locked
    specs = run_spec.resolve_specs(cfg)
    assert "stem" in specs and "head" in specs


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(ROOT)))
def test_sweep_expands_with_unique_deterministic_names(path):
    runs = sweep.expand(str(path))
    names = [n for n, _, _ in runs]
    assert len(set(names)) == len(names)
    assert names == [n for n, _, _ in sweep.expand(str(path))]


def test_paper_settings_in_cifar_configs():
    expected = {
        "bf16": None,
        "w8a8": (8, 8),
        "w4a4": (4, 4),
        "w4a4_ends8": (4, 4),
    }
    for setting, bits in expected.items():
        cfg = config_lib.load_config(ROOT / f"configs/cifar10/resnet20_{setting}.py")
        specs = run_spec.resolve_specs(cfg)
        body = specs["stage1/block1/conv2"]
        assert (body.w_bits, body.a_bits) == (bits or (None, None))
        if setting == "w4a4_ends8":
            assert (specs["stem"].w_bits, specs["head"].a_bits) == (8, 8)


def test_paper_sweep_is_4_settings_by_9_widths():
    runs = sweep.expand(str(ROOT / "configs/cifar10/sweep_paper.py"))
    assert len(runs) == 36
    assert {r[2].setting for r in runs} == {"bf16", "w8a8", "w4a4", "w4a4_ends8"}
    assert sorted({r[2].model.width for r in runs}) == [0.5, 0.62, 0.75, 0.87, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert all(r[2].optim.num_epochs >= 60 for r in runs)


def test_overrides_are_type_checked():
    path = ROOT / "configs/cifar10/resnet20_bf16.py"
    cfg = config_lib.load_config(path, ["--config.model.width=1.5", "--config.optim.num_epochs=3"])
    assert cfg.model.width == 1.5 and cfg.optim.num_epochs == 3
    assert config_lib.load_config(path, ["--config.model.width=2"]).model.width == 2.0
    with pytest.raises(config_lib.ConfigError, match="unknown config key 'model.widht'; did you mean model.width"):
        config_lib.load_config(path, ["--config.model.widht=1"])
    with pytest.raises(config_lib.ConfigError, match="expected a int"):
        config_lib.load_config(path, ["--config.optim.num_epochs=abc"])
    with pytest.raises(config_lib.ConfigError, match="must look like"):
        config_lib.load_config(path, ["--config.seed"])
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        config_lib.load_config("configs/nope.py")
