"""The cost model against paper.md sections 2.3 and 5.2."""

import pytest

from qresnet import cost, resnet
from qresnet.quant import QuantSpec, resolve_specs

R50 = dict(width=1.0, num_classes=1000, input_shape=(224, 224, 3))
NAMES = resnet.layer_names("resnet50", 1.0, 1000, (224, 224, 3))
SETTINGS = {
    "bf16": [(".*", None, None)],
    "w8a8": [(".*", 8, 8)],
    "w4a4": [(".*", 4, 4)],
    "w4a4_ends8": [("stem|head", 8, 8), (".*", 4, 4)],
}


def _cost(rules, width=1.0):
    names = resnet.layer_names("resnet50", width, 1000, (224, 224, 3))
    return cost.model_cost("resnet50", **{**R50, "width": width}, specs=resolve_specs(rules, names))


def test_resnet50_macs_and_weights():
    total = _cost(SETTINGS["bf16"])["total"]
    assert total["macs"] == 4_089_184_256
    assert total["weights"] == 25_502_912
    layers = {c.name: c for c in cost.layer_costs("resnet50", **R50)}
    assert layers["stem"].macs == 118_013_952 and layers["stem"].weights == 9_408
    assert layers["head"].macs == 2_048_000


@pytest.mark.parametrize(
    "rules,quadratic,memory",
    [
        ([(".*", None, None)], 1_046_831_169_536, 408_046_592),
        ([(".*", 8, None)], 523_415_584_768, 204_023_296),
        ([(".*", 4, None)], 261_707_792_384, 102_011_648),
        ([(".*", 8, 8)], 261_707_792_384, 204_023_296),
        ([(".*", 4, 4)], 65_426_948_096, 102_011_648),
        ([(".*", 4, 2)], 32_713_474_048, 102_011_648),
    ],
    ids=["bf16", "w8", "w4", "w8a8", "w4a4", "w4a2"],
)
def test_paper_cost_constants(rules, quadratic, memory):
    total = _cost(rules)["total"]
    assert total["quadratic"] == quadratic
    assert total["memory"] == memory


def test_mostly_4bit_ratios():
    c = _cost(SETTINGS["w4a4_ends8"])
    assert c["total"]["linear"] == 16_836_984_832
    assert c["total"]["quadratic"] == 71_189_921_792
    assert c["total"]["memory"] == 110_241_280
    assert round(c["ratio"]["linear"], 4) == 0.2573
    assert round(c["ratio"]["quadratic"], 4) == 0.0680
    assert round(c["ratio"]["memory"], 4) == 0.2702


# paper.md 5.2: (setting, width) -> (linear, quadratic, memory) ratios.
PAPER_POINTS = {
    ("bf16", 0.5): (0.2757, 0.2757, 0.2706),
    ("bf16", 0.75): (0.5782, 0.5782, 0.5779),
    ("bf16", 1.5): (2.2018, 2.2018, 2.1887),
    ("bf16", 2.0): (3.8810, 3.8810, 3.8367),
    ("w8a8", 0.62): (0.2006, 0.1003, 0.2008),
    ("w8a8", 1.75): (1.4909, 0.7454, 1.4776),
    ("w4a4_ends8", 0.5): (0.0762, 0.0227, 0.0778),
    ("w4a4_ends8", 0.87): (0.1971, 0.0529, 0.2084),
    ("w4a4_ends8", 1.25): (0.3927, 0.1019, 0.4094),
    ("w4a4_ends8", 2.0): (0.9777, 0.2482, 0.9994),
    ("w4a4", 0.62): (0.1003, 0.0251, 0.1004),
    ("w4a4", 2.0): (0.9703, 0.2426, 0.9592),
}


@pytest.mark.parametrize("key", sorted(PAPER_POINTS), ids=str)
def test_paper_sweep_cost_ratios(key):
    ratio = _cost(SETTINGS[key[0]], key[1])["ratio"]
    for k, expected in zip(cost.COST_KEYS, PAPER_POINTS[key]):
        assert ratio[k] == pytest.approx(expected, abs=1.1e-4), k


def test_linear_rounds_up_to_supported_widths():
    assert [cost.linear_bits(a, w) for a, w in [(2, 2), (4, 3), (5, 4), (8, 8), (None, 4), (8, None)]] == [
        4,
        4,
        8,
        8,
        16,
        16,
    ]
    c = cost.layer_cost("x", 10, 3, QuantSpec(w_bits=4, a_bits=8))
    assert (c.linear, c.quadratic, c.memory) == (80, 320, 12)


def test_cost_falls_with_bits():
    costs = [_cost(SETTINGS[s])["ratio"]["quadratic"] for s in ("bf16", "w8a8", "w4a4_ends8", "w4a4")]
    assert costs == sorted(costs, reverse=True)


def test_cifar_reference_is_bf16_resnet20():
    c = cost.model_cost("resnet20", width=1.0, num_classes=10, input_shape=(32, 32, 3))
    assert c["ratio"] == {"linear": 1.0, "quadratic": 1.0, "memory": 1.0}
    assert c["total"]["macs"] == 40_813_184
