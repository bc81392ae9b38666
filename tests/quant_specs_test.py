"""Rule resolution: first match wins, None = float, and every error names the fix."""

import pytest

from qresnet import resnet
from qresnet.quant import specs

NAMES = resnet.layer_names("resnet20")


def test_first_match_wins_and_float():
    out = specs.resolve_specs([("stem|head", 8, 8), ("stage0/.*", None, None), (".*", 4, 4)], NAMES)
    assert out["stem"].w_bits == 8 and out["head"].a_bits == 8
    assert out["stage0/block1/conv2"].is_float
    assert out["stage2/block2/conv2"].w_bits == 4
    assert list(out) == list(NAMES)


def test_signed_defaults_follow_the_paper():
    out = specs.resolve_specs([(".*", 4, 4)], NAMES, resnet.signed_layers(NAMES))
    signed = sorted(n for n, s in out.items() if s.a_signed)
    assert signed == ["stage0/block0/conv1", "stage1/block0/conv1", "stage2/block0/conv1", "stem"]
    forced = specs.resolve_specs([("stem", 4, 4, {"a_signed": False}), (".*", 4, 4)], NAMES, ["stem"])
    assert forced["stem"].a_signed is False


def test_options_reach_the_spec():
    out = specs.resolve_specs([(".*", 4, 4, {"a_bound": "lsq", "a_granularity": "per_tensor"})], NAMES)
    assert out["head"].a_bound == "lsq" and out["head"].a_granularity == "per_tensor"


def test_specs_are_read_only_and_round_trip():
    out = specs.resolve_specs([(".*", 4, 8)], NAMES)
    with pytest.raises(TypeError):
        out["stem"] = specs.FLOAT
    assert dict(specs.specs_from_json(specs.specs_to_json(out))) == dict(out)


def test_rule_matching_nothing_is_an_error():
    with pytest.raises(specs.SpecError, match=r"'stage9/.\*' matches no layer"):
        specs.resolve_specs([("stage9/.*", 4, 4), (".*", 8, 8)], NAMES)


def test_shadowed_rule_is_an_error():
    with pytest.raises(specs.SpecError, match="never used"):
        specs.resolve_specs([(".*", 8, 8), ("stem", 4, 4)], NAMES)


def test_layer_without_spec_is_an_error():
    with pytest.raises(specs.SpecError, match=r"\['head'\] match no rule"):
        specs.resolve_specs([("stem|stage.*", 4, 4)], NAMES)


@pytest.mark.parametrize("bits", [0, 9, -1, "4", 4.0, True])
def test_bad_bits(bits):
    with pytest.raises(specs.SpecError, match="w_bits"):
        specs.resolve_specs([(".*", bits, 4)], NAMES)


def test_bad_option_and_regex():
    with pytest.raises(specs.SpecError, match="unknown option"):
        specs.make_rule((".*", 4, 4, {"a_bonud": "lsq"}))
    with pytest.raises(specs.SpecError, match="a_bound must be one of"):
        specs.make_rule((".*", 4, 4, {"a_bound": "pact"}))
    with pytest.raises(specs.SpecError, match="not a valid regex"):
        specs.make_rule(("stage(", 4, 4))
    with pytest.raises(specs.SpecError, match="a rule is"):
        specs.make_rule((".*", 4))


def test_pow2_scale_is_a_bool_and_not_with_lsq():
    assert specs.QuantSpec(w_bits=8, a_bits=8, pow2_scale=True).pow2_scale
    with pytest.raises(specs.SpecError, match="stops LSQ's bound gradient"):
        specs.QuantSpec(w_bits=8, a_bits=8, a_bound="lsq", pow2_scale=True)
    with pytest.raises(specs.SpecError, match="pow2_scale must be True or False, got 'yes'"):
        specs.QuantSpec(w_bits=8, a_bits=8, pow2_scale="yes")


def test_full_weight_grid_needs_a_learned_kernel_bound_of_two_or_more_bits():
    assert specs.QuantSpec(w_bits=2, w_bound="lsq", w_grid="full").w_grid == "full"
    with pytest.raises(specs.SpecError, match="w_grid must be one of"):
        specs.QuantSpec(w_bits=2, w_bound="lsq", w_grid="asym")
    with pytest.raises(specs.SpecError, match="set w_bound='lsq' and 2 or more bits"):
        specs.make_rule((".*", 2, 2, {"w_grid": "full"}))
    with pytest.raises(specs.SpecError, match="w_bits=1"):
        specs.QuantSpec(w_bits=1, w_bound="lsq", w_grid="full")


def test_kernel_ste_names_a_gradient_and_needs_a_learned_kernel_bound():
    assert specs.QuantSpec(w_bits=2, w_bound="lsq", w_ste="pass").w_ste == "pass"
    with pytest.raises(specs.SpecError, match="w_ste must be one of"):
        specs.QuantSpec(w_bits=2, w_bound="lsq", w_ste="through")
    with pytest.raises(specs.SpecError, match="w_bound='max_abs' clips nothing"):
        specs.make_rule((".*", 2, 2, {"w_ste": "pass"}))


def test_kernel_standardization_is_a_bool_that_needs_a_learned_kernel_bound():
    assert specs.QuantSpec(w_bits=2, w_bound="lsq", w_standardize=True).w_standardize
    with pytest.raises(specs.SpecError, match="w_standardize must be True or False"):
        specs.QuantSpec(w_bits=2, w_bound="lsq", w_standardize="yes")
    with pytest.raises(specs.SpecError, match="set w_bound='lsq' or drop w_standardize"):
        specs.make_rule((".*", 2, 2, {"w_standardize": True}))


def test_options_added_later_are_left_out_of_records_at_their_default():
    """A run recorded before w_grid (or the learned bounds' starts) existed keeps its identity: its record
    reads the same as today's spec at the default, and a set option is recorded."""
    spec = specs.QuantSpec(w_bits=4, a_bits=4, w_bound="lsq")
    assert not {"w_grid", "w_lsq_start", "a_lsq_start", "w_ste", "w_standardize"} & set(spec.to_dict())
    assert specs.QuantSpec(**spec.to_dict()) == spec
    full = specs.QuantSpec(w_bits=2, w_bound="lsq", w_grid="full", a_lsq_start="mean")
    assert full.to_dict()["w_grid"] == "full" and specs.specs_from_json(specs.specs_to_json({"a": full}))["a"] == full


def test_lsq_start_names_a_start_and_needs_a_learned_bound():
    assert specs.QuantSpec(w_bits=4, w_bound="lsq", w_lsq_start="max").w_lsq_start == "max"
    with pytest.raises(specs.SpecError, match="a_lsq_start must be one of"):
        specs.QuantSpec(a_bits=4, a_bound="lsq", a_lsq_start="median")
    with pytest.raises(specs.SpecError, match="set a_bound='lsq' or drop a_lsq_start"):
        specs.make_rule((".*", 4, 4, {"w_bound": "lsq", "a_lsq_start": "max"}))
