"""Pinned layer names, parameter counts and shapes of the ResNet family."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qresnet import resnet
from qresnet.quant import ConvBackend


def _params(name, classes, shape, width=1.0):
    m = resnet.create_model(name, num_classes=classes, width=width)
    return jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, *shape))))["params"]


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_resnet20_layer_names_pinned():
    names = resnet.layer_names("resnet20")
    expected = ["stem"]
    for s in range(3):
        for b in range(3):
            expected += [f"stage{s}/block{b}/conv1", f"stage{s}/block{b}/conv2"]
            if s > 0 and b == 0:
                expected.append(f"stage{s}/block{b}/proj")
    expected.append("head")
    assert list(names) == expected


def test_resnet50_layer_names():
    names = resnet.layer_names("resnet50", 1.0, 1000, (224, 224, 3))
    assert len(names) == 54  # stem + 16 blocks x 3 + 4 projections + head
    assert names[:5] == (
        "stem",
        "stage0/block0/conv1",
        "stage0/block0/conv2",
        "stage0/block0/conv3",
        "stage0/block0/proj",
    )
    assert "stage2/block0/proj" in names and names[-1] == "head"


@pytest.mark.parametrize(
    "name,classes,shape,count",
    [
        ("resnet50", 1000, (224, 224, 3), 25_557_032),  # torchvision's count
        ("resnet18", 1000, (224, 224, 3), 11_689_512),
        ("resnet34", 1000, (224, 224, 3), 21_797_672),
        ("resnet101", 1000, (224, 224, 3), 44_549_160),
    ],
)
def test_parameter_counts(name, classes, shape, count):
    assert _count(_params(name, classes, shape)) == count


def test_resnet20_option_b_parameter_count():
    # stem 432+32; stage0 3*(2*2304+64); stage1 (4608+9216+128+512+64) + 2*(2*9216+128);
    # stage2 (18432+36864+256+2048+128) + 2*(2*36864+256); head 640+10.
    expected = 464 + 14_016 + (14_528 + 37_120) + (57_728 + 147_968) + 650
    assert _count(_params("resnet20", 10, (32, 32, 3))) == expected == 272_474


def test_width_scales_stages_not_stem():
    p = _params("resnet50", 1000, (224, 224, 3), width=0.5)
    assert p["stem"]["kernel"].shape == (7, 7, 3, 64)
    assert p["stage0_block0"]["conv1"]["kernel"].shape == (1, 1, 64, 32)
    assert p["stage3_block0"]["conv3"]["kernel"].shape == (1, 1, 256, 1024)
    assert p["head"]["kernel"].shape == (1024, 1000)
    assert resnet.stage_filters(resnet.ARCHS["resnet20"], 0.62) == [9, 19, 39]


def test_fashion_mnist_shape_and_last_bn_zero():
    m = resnet.create_model("resnet20", num_classes=10)
    v = m.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
    assert v["params"]["stem"]["kernel"].shape == (3, 3, 1, 16)
    np.testing.assert_array_equal(v["params"]["stage1_block2"]["bn2"]["scale"], 0.0)
    assert m.apply(v, jnp.ones((2, 28, 28, 1))).shape == (2, 10)


@pytest.mark.parametrize("width", [0, -1.0, "1"])
def test_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        resnet.create_model("resnet20", num_classes=10, width=width)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet21'"):
        resnet.create_model("resnet21", num_classes=10)


def test_channel_multiple_gives_the_same_model():
    """Width 0.62 (10, 20, 40 channels) padded to multiples of 8 inside each conv: same variables, same logits."""
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    plain = resnet.create_model("resnet20", num_classes=10, width=0.62)
    padded = resnet.create_model("resnet20", num_classes=10, width=0.62, backend=ConvBackend(channel_multiple=8))
    v = plain.init(jax.random.key(1), x)
    np.testing.assert_allclose(padded.apply(v, x), plain.apply(v, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="backend must be a quant.ConvBackend"):
        resnet.create_model("resnet20", num_classes=10, backend="cudnn")


def test_grouped_batch_norm_is_batch_norm_on_each_replica():
    x = jax.random.normal(jax.random.key(0), (8, 3, 3, 5)) * 2 + 1
    grouped = resnet.GroupBatchNorm(4, momentum=0.9)
    plain = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=resnet.BN_EPSILON)
    v = plain.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, grouped.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, v)
    y, new = grouped.apply(v, x, mutable=["batch_stats"])
    parts = [plain.apply(v, x[i : i + 4], mutable=["batch_stats"]) for i in (0, 4)]
    np.testing.assert_allclose(y, jnp.concatenate([p[0] for p in parts]), rtol=1e-5, atol=1e-5)
    for key in ("mean", "var"):  # running averages move by the mean of the replicas' statistics
        want = (parts[0][1]["batch_stats"][key] + parts[1][1]["batch_stats"][key]) / 2
        np.testing.assert_allclose(new["batch_stats"][key], want, rtol=1e-5, atol=1e-6)
    inference = resnet.GroupBatchNorm(4, use_running_average=True)
    np.testing.assert_allclose(
        inference.apply(v, x), nn.BatchNorm(use_running_average=True).apply(v, x), rtol=1e-6, atol=1e-6
    )


def test_replica_statistics_reach_every_bn_and_quantizer():
    specs = resnet.resolve_specs([("stem|head", 8, 8), (".*", 4, 4)], "resnet8", width=0.25)
    model = resnet.create_model("resnet8", num_classes=10, width=0.25, specs=specs, replica_size=2)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    v = model.init(jax.random.key(1), x)
    _, new = model.apply(v, x, train=True, act_quant=False, mutable=["batch_stats", "quant_stats"])
    plain = resnet.create_model("resnet8", num_classes=10, width=0.25, specs=specs)
    _, new_plain = plain.apply(v, x, train=True, act_quant=False, mutable=["batch_stats", "quant_stats"])
    # The stem reads the same image either way: the mean of the replicas' maxima is at most the batch max,
    # and below it where the replicas differ.
    stem, stem_plain = new["quant_stats"]["stem"]["act_bound"], new_plain["quant_stats"]["stem"]["act_bound"]
    assert jnp.all(stem <= stem_plain + 1e-6) and jnp.any(stem < stem_plain)
    assert any(not jnp.allclose(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(new_plain)))
    with pytest.raises(ValueError, match="replica_size must be an int >= 0"):
        resnet.create_model("resnet8", num_classes=10, replica_size=-1)


def test_a_standardized_head_kernel_is_refused_naming_the_layer():
    """w_standardize leaves the kernel's scale to the BatchNorm after the layer; the head has none."""
    from qresnet.quant import SpecError

    opts = {"w_bound": "lsq", "w_standardize": True}
    assert resnet.resolve_specs([("head", 8, 8), (".*", 2, 2, opts)], "resnet8")["stem"].w_standardize
    with pytest.raises(SpecError, match="layer 'head' has w_standardize=True"):
        resnet.resolve_specs([(".*", 2, 2, opts)], "resnet8")
