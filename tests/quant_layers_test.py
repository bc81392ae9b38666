"""QConv/QDense: float spec equals nn.Conv/nn.Dense; quantizer state and schedule."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from qresnet.quant import ConvBackend, QConv, QDense, QuantSpec, ops


def test_float_qconv_is_nn_conv():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    ref = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=True)
    q = QConv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=True)
    v_ref = ref.init(jax.random.key(1), x)
    v_q = q.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, v_ref) == jax.tree.map(jnp.shape, v_q)
    np.testing.assert_array_equal(ref.apply(v_ref, x), q.apply(v_ref, x))


def test_float_qdense_is_nn_dense():
    x = jax.random.normal(jax.random.key(0), (4, 7))
    v = nn.Dense(3).init(jax.random.key(1), x)
    np.testing.assert_array_equal(nn.Dense(3).apply(v, x), QDense(3).apply(v, x))


def test_quantized_conv_uses_quantized_kernel_and_input():
    spec = QuantSpec(w_bits=4, a_bits=4, a_bound="fixed", a_fixed_bound=2.0, a_signed=False)
    x = jax.random.uniform(jax.random.key(0), (2, 6, 6, 3), maxval=3.0)
    layer = QConv(4, (3, 3), spec=spec)
    v = layer.init(jax.random.key(1), x)
    k = v["params"]["kernel"]
    expected = nn.Conv(4, (3, 3), use_bias=False).apply(
        {"params": {"kernel": ops.fake_quant_weight(k, 4)}}, ops.fake_quant_unsigned(x, 4, 2.0)
    )
    np.testing.assert_allclose(layer.apply(v, x), expected, rtol=1e-5, atol=1e-6)


def test_ema_bound_schedule():
    """Collected while act_quant is off (float output), frozen once it is on."""
    spec = QuantSpec(w_bits=None, a_bits=8, a_signed=False)
    layer = QDense(2, spec=spec)
    x1 = jnp.array([[1.0, 2.0], [0.5, 4.0]])
    v = layer.init(jax.random.key(0), x1)
    assert v["quant_stats"]["act_bound"].shape == (2,)
    np.testing.assert_array_equal(v["quant_stats"]["act_bound"], 0.0)
    y, new = layer.apply(v, x1, train=True, act_quant=jnp.bool_(False), mutable=["quant_stats"])
    np.testing.assert_allclose(new["quant_stats"]["act_bound"], [0.1, 0.4])
    np.testing.assert_allclose(y, layer.apply(v, x1, act_quant=False))  # float before the start
    v = {**v, **new}
    _, frozen = layer.apply(v, 10 * x1, train=True, act_quant=jnp.bool_(True), mutable=["quant_stats"])
    np.testing.assert_allclose(frozen["quant_stats"]["act_bound"], [0.1, 0.4])


def test_per_tensor_activation_bound_is_scalar():
    spec = QuantSpec(a_bits=8, a_granularity="per_tensor", a_signed=True)
    v = QConv(2, (1, 1), spec=spec).init(jax.random.key(0), jnp.ones((1, 2, 2, 3)))
    assert v["quant_stats"]["act_bound"].shape == ()


def test_lsq_bound_is_a_start_from_data_plus_a_learned_offset():
    spec = QuantSpec(a_bits=4, a_bound="lsq", a_signed=False)
    x = jnp.full((4, 3), 2.0)
    layer = QDense(2, spec=spec)
    v = layer.init(jax.random.key(0), x)
    np.testing.assert_allclose(v["quant_stats"]["act_bound"], ops.lsq_init_bound(x, 4, False, (0,)))
    np.testing.assert_array_equal(v["params"]["act_bound_offset"], np.zeros(3))
    g = jax.grad(lambda p: layer.apply({**v, "params": p}, x * 1.3).sum())(v["params"])
    assert float(jnp.abs(g["act_bound_offset"]).sum()) > 0


def test_lsq_bound_learns_its_step_as_lsq_does():
    """SGD on the bound offset moves the step (bound / N) as LSQ moves its step: by lr * g * dL/ds,
    g = 1/sqrt(features per example * qmax); not N^2 times less (N = 16 at 4 bits unsigned), and
    not with the batch counted as features."""
    spec = QuantSpec(a_bits=4, a_bound="lsq", a_signed=False, a_granularity="per_tensor")
    x = jax.random.uniform(jax.random.key(0), (8, 3), maxval=4.0)
    layer = QDense(2, spec=spec, use_bias=False)
    v = layer.init(jax.random.key(1), x)
    v = {**v, "quant_stats": {"act_bound": jnp.float32(3.0)}}
    kernel, lr, g = v["params"]["kernel"], 0.1, 1.0 / (3 * 15) ** 0.5  # 3 features per example

    def lsq_loss(step):  # LSQ's own parameter, the step, whose gradient g scales
        return jnp.sum(jnp.sin(ops.lsq_fake_quant(x, 4, step * 16, False, g) @ kernel))

    def our_loss(params):
        return jnp.sum(jnp.sin(layer.apply({**v, "params": params}, x, act_quant=True)))

    np.testing.assert_allclose(our_loss(v["params"]), lsq_loss(jnp.float32(3.0 / 16)), rtol=1e-6)
    d_step = jax.grad(lsq_loss)(jnp.float32(3.0 / 16))
    d_offset = jax.grad(our_loss)(v["params"])["act_bound_offset"]
    assert float(d_step) != 0
    np.testing.assert_allclose(lr * d_offset / 16, lr * d_step, rtol=1e-5)  # the step moves as LSQ's


def test_lsq_start_follows_the_activations_until_quantization_starts():
    """Trained without activation quantization on inputs 10x those at init, the start moves to
    LSQ's init for the new inputs; with quantization on it stays where it is."""
    spec = QuantSpec(a_bits=4, a_bound="lsq", a_signed=False, a_ema_coeff=0.5)
    x = jax.random.uniform(jax.random.key(0), (8, 3))
    layer = QDense(2, spec=spec)
    v = layer.init(jax.random.key(1), x)
    for _ in range(30):
        _, new = layer.apply(v, 10 * x, train=True, act_quant=False, mutable=["quant_stats"])
        v = {**v, **new}
    np.testing.assert_allclose(v["quant_stats"]["act_bound"], ops.lsq_init_bound(10 * x, 4, False, (0,)), rtol=1e-5)
    for flag in (True, jnp.bool_(True)):
        _, frozen = layer.apply(v, x, train=True, act_quant=flag, mutable=["quant_stats"])
        np.testing.assert_array_equal(frozen["quant_stats"]["act_bound"], v["quant_stats"]["act_bound"])


def test_lsq_max_start_is_the_papers_bound_then_learns():
    """w_lsq_start and a_lsq_start "max": the input bound starts at the batch max and follows its EMA as the paper's
    EMA-max bound does until quantization starts; the kernel bound starts at max|W| per channel;
    both then get LSQ's gradient through their offsets."""
    learned = {"w_bound": "lsq", "a_bound": "lsq", "a_signed": False}
    spec = QuantSpec(w_bits=4, a_bits=4, **learned, w_lsq_start="max", a_lsq_start="max")
    paper = QuantSpec(w_bits=4, a_bits=4, a_signed=False)
    x = jax.random.uniform(jax.random.key(0), (8, 3), maxval=jnp.array([1.0, 2.0, 4.0]))
    layer, ref = QDense(2, spec=spec, use_bias=False), QDense(2, spec=paper, use_bias=False)
    v = layer.init(jax.random.key(1), x)
    np.testing.assert_allclose(v["quant_stats"]["act_bound"], jnp.max(x, axis=0))
    np.testing.assert_allclose(v["quant_stats"]["kernel_bound"], jnp.max(jnp.abs(v["params"]["kernel"]), axis=0))
    w = {"params": {"kernel": v["params"]["kernel"]}, "quant_stats": {"act_bound": jnp.zeros(3)}}
    for scale in (3.0, 0.5):  # calibration: the start tracks the batch max as the EMA-max bound does
        _, new = layer.apply(v, scale * x, train=True, act_quant=False, mutable=["quant_stats"])
        _, new_ref = ref.apply(w, scale * x, train=True, act_quant=False, mutable=["quant_stats"])
        v, w = {**v, **new}, {**w, **new_ref}
    # The EMA-max bound starts from 0; the learned one from the init batch's max: a known difference.
    expected = 0.9 * (0.9 * jnp.max(x, axis=0) + 0.1 * 3 * jnp.max(x, axis=0)) + 0.1 * 0.5 * jnp.max(x, axis=0)
    np.testing.assert_allclose(v["quant_stats"]["act_bound"], expected, rtol=1e-6)
    assert float(jnp.max(w["quant_stats"]["act_bound"])) > 0
    # At the start the forward pass is the paper's quantizer with these bounds.
    paper_w = {"params": w["params"], "quant_stats": {"act_bound": v["quant_stats"]["act_bound"]}}
    np.testing.assert_allclose(layer.apply(v, 2 * x), ref.apply(paper_w, 2 * x), rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda p: jnp.sum(jnp.sin(layer.apply({**v, "params": p}, 2 * x))))(v["params"])
    assert float(jnp.abs(g["act_bound_offset"]).sum()) > 0 and float(jnp.abs(g["kernel_bound_offset"]).sum()) > 0
    # Each side has its own start: inputs at the max, the kernel at LSQ's init.
    inputs_only = QDense(2, spec=QuantSpec(w_bits=4, a_bits=4, **learned, a_lsq_start="max"), use_bias=False)
    v = inputs_only.init(jax.random.key(1), x)
    np.testing.assert_allclose(v["quant_stats"]["act_bound"], jnp.max(x, axis=0))
    np.testing.assert_allclose(
        v["quant_stats"]["kernel_bound"], ops.lsq_init_bound(v["params"]["kernel"], 4, True, (0,)), rtol=1e-6
    )


def test_lsq_kernel_bound_starts_from_the_kernel_and_learns_its_step_as_lsq_does():
    """w_bound="lsq": one bound per output channel, started at LSQ's init (step 2 mean|W| / sqrt(qmax),
    at 2 bits the ternary grid {-s, 0, s}); the step moves as LSQ's with g = 1/sqrt(weights per channel * qmax)."""
    spec = QuantSpec(w_bits=2, w_bound="lsq")
    x = jax.random.normal(jax.random.key(0), (4, 5))
    layer = QDense(3, spec=spec, use_bias=False)
    v = layer.init(jax.random.key(1), x)
    kernel = v["params"]["kernel"]
    start = 2 * jnp.mean(jnp.abs(kernel), axis=0)  # qmax = N = 1 at 2 bits signed
    np.testing.assert_allclose(v["quant_stats"]["kernel_bound"], start, rtol=1e-6)
    y = layer.apply(v, x)
    w_hat = ops.lsq_fake_quant(kernel, 2, start, True, 1.0)
    assert set(np.unique(np.round(np.asarray(w_hat / start), 6))) <= {-1.0, 0.0, 1.0}
    np.testing.assert_allclose(y, x @ w_hat, rtol=1e-5)
    g = 1.0 / (5 * 1) ** 0.5  # 5 weights per output channel, qmax 1

    def lsq_loss(step):
        return jnp.sum(jnp.sin(x @ ops.lsq_fake_quant(kernel, 2, step, True, g)))

    d_step = jax.grad(lsq_loss)(start)
    d_offset = jax.grad(lambda p: jnp.sum(jnp.sin(layer.apply({**v, "params": p}, x))))(v["params"])
    assert float(jnp.abs(d_step).sum()) > 0
    np.testing.assert_allclose(d_offset["kernel_bound_offset"], d_step, rtol=1e-5)


def test_full_weight_grid_has_four_levels_at_two_bits_in_both_layer_paths():
    """w_grid="full": the kernel takes LSQ's {-2, -1, 0, 1} steps at 2 bits, alike where the layer multiplies
    fake-quantized values and where it multiplies codes (per-tensor inputs)."""
    x = jax.random.normal(jax.random.key(0), (4, 64))
    laplace = lambda key, shape, dtype: jax.random.laplace(key, shape, dtype)  # noqa: E731  (tails past 3 mean|W|)
    for a_granularity in ("per_channel", "per_tensor"):
        spec = QuantSpec(w_bits=2, a_bits=8, w_bound="lsq", w_grid="full", a_signed=True, a_granularity=a_granularity)
        layer = QDense(3, spec=spec, use_bias=False, kernel_init=laplace)
        v = layer.init(jax.random.key(1), x)
        bound = v["quant_stats"]["kernel_bound"]
        w_hat = ops.lsq_fake_quant(v["params"]["kernel"], 2, bound, True, 1.0, full=True)
        levels = set(np.unique(np.round(np.asarray(w_hat / bound), 6)))
        assert levels == {-2.0, -1.0, 0.0, 1.0}, a_granularity
        x_hat = ops.fake_quant(x, 8, v["quant_stats"]["act_bound"], True)
        np.testing.assert_allclose(layer.apply(v, x, act_quant=True), x_hat @ w_hat, rtol=2e-2, atol=2e-2)


def test_kernel_ste_pass_trains_weights_past_the_bound_in_both_layer_paths():
    """w_ste="pass": a kernel value past its learned bound gets a gradient (LSQ's "clipped" gives it none),
    alike where the layer multiplies fake-quantized values and where it multiplies codes; the output and
    the bound's gradient are the same."""
    x = jax.random.normal(jax.random.key(0), (4, 8))
    for a_granularity in ("per_channel", "per_tensor"):
        grads, outs = {}, {}
        for ste in ("clipped", "pass"):
            spec = QuantSpec(
                w_bits=2, a_bits=8, w_bound="lsq", a_bound="lsq", w_ste=ste, a_signed=True, a_granularity=a_granularity
            )
            layer = QDense(3, spec=spec, use_bias=False)
            v = layer.init(jax.random.key(1), x)
            params = {
                **v["params"],
                "kernel": v["params"]["kernel"].at[0, 0].set(10 * v["quant_stats"]["kernel_bound"][0]),
            }
            loss = lambda p, layer=layer, v=v: jnp.sum(jnp.sin(layer.apply({**v, "params": p}, x, act_quant=True)))  # noqa: E731
            outs[ste], grads[ste] = loss(params), jax.grad(loss)(params)
        assert float(outs["clipped"]) == float(outs["pass"]), a_granularity
        assert float(grads["clipped"]["kernel"][0, 0]) == 0.0 and float(grads["pass"]["kernel"][0, 0]) != 0.0
        np.testing.assert_array_equal(grads["clipped"]["kernel_bound_offset"], grads["pass"]["kernel_bound_offset"])


def test_learned_bound_pushed_below_zero_is_held_positive_and_keeps_learning():
    """An offset that would make the bound negative quantizes with a small positive bound (not to 0, a
    dead channel) and still gets a gradient, so the bound can come back."""
    spec = QuantSpec(a_bits=4, a_bound="lsq", a_signed=False, a_granularity="per_tensor")
    x = jax.random.uniform(jax.random.key(0), (8, 3), maxval=4.0)
    layer = QDense(2, spec=spec, use_bias=False)
    v = layer.init(jax.random.key(1), x)
    start = v["quant_stats"]["act_bound"]
    params = {**v["params"], "act_bound_offset": -2 * start}
    y = layer.apply({**v, "params": params}, x)
    assert float(jnp.abs(y).sum()) > 0
    g = jax.grad(lambda p: jnp.sum(layer.apply({**v, "params": p}, x) ** 2))(params)
    assert float(jnp.abs(g["act_bound_offset"])) > 0
    np.testing.assert_allclose(ops.learned_bound(start, -2 * start), ops.LSQ_MIN_FRACTION * start, rtol=1e-6)


@pytest.mark.parametrize("act_quant", [True, jnp.bool_(True)])
def test_static_and_traced_switch_agree(act_quant):
    spec = QuantSpec(w_bits=8, a_bits=4, a_bound="fixed", a_fixed_bound=1.0, a_signed=True)
    x = jax.random.normal(jax.random.key(0), (2, 5))
    layer = QDense(3, spec=spec)
    v = layer.init(jax.random.key(1), x)
    np.testing.assert_array_equal(layer.apply(v, x, act_quant=act_quant), layer.apply(v, x, act_quant=True))


@pytest.mark.parametrize("bound", ["lsq", "ema_max"])
def test_variables_made_with_quantization_off_apply_with_it_on(bound):
    spec = QuantSpec(w_bits=4, a_bits=4, a_bound=bound, a_signed=False)
    x = jax.random.uniform(jax.random.key(0), (3, 5))
    layer = QDense(2, spec=spec)
    v = layer.init(jax.random.key(1), x, act_quant=False)
    assert "act_bound" in v["quant_stats"]
    assert layer.apply(v, x, act_quant=True).shape == (3, 2)


@pytest.mark.parametrize("a_bound", ["ema_max", "lsq"])
@pytest.mark.parametrize("act_quant", [True, False, "traced_on", "traced_off"])
def test_per_tensor_layer_multiplies_codes_as_the_fake_quant_values(a_bound, act_quant):
    """Codes times codes over s_x * s_w is the fake-quant layer, in value and in gradient."""
    spec = QuantSpec(w_bits=4, a_bits=4, a_granularity="per_tensor", a_signed=False, a_bound=a_bound)
    flag = {"traced_on": jnp.bool_(True), "traced_off": jnp.bool_(False)}.get(act_quant, act_quant)
    x = jax.random.uniform(jax.random.key(0), (2, 6, 6, 3), maxval=3.0)
    layer = QConv(4, (3, 3), padding=((1, 1), (1, 1)), spec=spec)
    v = layer.init(jax.random.key(1), x)
    if a_bound == "ema_max":
        v = {**v, "quant_stats": {"act_bound": jnp.float32(2.0)}}
        bound = 2.0
    else:  # a learned offset away from its start of 0
        v = {**v, "params": {**v["params"], "act_bound_offset": jnp.float32(0.25)}}
        bound = v["quant_stats"]["act_bound"] + 0.25
    on = flag is True or (not isinstance(flag, bool) and bool(flag))

    def reference(params, x):
        if on and a_bound == "lsq":
            grad_scale = 16**2 / (x.size // x.shape[0] * ops.int_range(4, False)[1]) ** 0.5  # features per example
            xq = ops.lsq_fake_quant(x, 4, v["quant_stats"]["act_bound"] + params["act_bound_offset"], False, grad_scale)
        else:
            xq = ops.fake_quant_unsigned(x, 4, bound) if on else x
        kq = ops.fake_quant_weight(params["kernel"], 4)
        return jax.lax.conv_general_dilated(
            xq, kq, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def ours(params, x):
        return layer.apply({**v, "params": params}, x, act_quant=flag)

    np.testing.assert_allclose(ours(v["params"], x), reference(v["params"], x), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(lambda p, x: jnp.sum(jnp.sin(ours(p, x))), argnums=(0, 1))(v["params"], x)
    g_ref = jax.grad(lambda p, x: jnp.sum(jnp.sin(reference(p, x))), argnums=(0, 1))(v["params"], x)
    np.testing.assert_allclose(g_ours[0]["kernel"], g_ref[0]["kernel"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g_ours[1], g_ref[1], rtol=1e-4, atol=1e-4)
    if a_bound == "lsq" and on:  # the learned bound gets the same (LSQ) gradient
        np.testing.assert_allclose(g_ours[0]["act_bound_offset"], g_ref[0]["act_bound_offset"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("channels", [5, 9])  # 5: the narrow (float32 products) path; 9: the int8 conv
def test_per_tensor_layer_equals_the_integer_layer_bit_for_bit(channels):
    """Padded 3x3 convs: the unsigned 8-bit codes pad with their shifted zero, the others with
    the conv's own zeros; both agree with the fake-quant layer to the bit."""
    from qresnet.quant import int_layers

    for signed, bits in ((False, 8), (False, 4), (True, 8), (True, 4)):
        spec = QuantSpec(w_bits=bits, a_bits=bits, a_granularity="per_tensor", a_signed=signed)
        x = jax.random.normal(jax.random.key(bits), (2, 7, 7, channels)) * 2 + (0 if signed else 2)
        layer = QConv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), spec=spec)
        v = {**layer.init(jax.random.key(1), x), "quant_stats": {"act_bound": jnp.float32(3.0)}}
        q, s = int_layers.kernel_codes(v["params"]["kernel"], spec)
        iv = {"params": {"kernel_int": q, "w_scale": s}, "quant_stats": v["quant_stats"]}
        integer = int_layers.IntConv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), spec=spec).apply(iv, x)
        np.testing.assert_array_equal(layer.apply(v, x), integer)


def test_pointwise_integer_conv_as_a_dot_is_the_conv():
    """A 1x1 IntConv run as an int8 dot (int32 sums) gives the integer conv's output and the
    per-tensor fake-quant layer's, to the bit, with and without stride and the unsigned shift."""
    from qresnet.quant import int_layers

    for signed, bits, stride in ((False, 8, 1), (False, 8, 2), (True, 4, 2)):
        spec = QuantSpec(w_bits=bits, a_bits=bits, a_granularity="per_tensor", a_signed=signed)
        x = jax.random.normal(jax.random.key(bits + stride), (2, 6, 6, 5)) * 2 + (0 if signed else 2)
        layer = QConv(7, (1, 1), strides=(stride, stride), spec=spec)
        v = {**layer.init(jax.random.key(1), x), "quant_stats": {"act_bound": jnp.float32(3.0)}}
        q, s = int_layers.kernel_codes(v["params"]["kernel"], spec)
        iv = {"params": {"kernel_int": q, "w_scale": s}, "quant_stats": v["quant_stats"]}
        outs = [
            int_layers.IntConv(7, (1, 1), strides=(stride, stride), spec=spec, pointwise_as_dot=dot).apply(iv, x)
            for dot in (True, False)
        ]
        assert outs[0].shape == (2, 6 // stride, 6 // stride, 7)
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(outs[0], layer.apply(v, x))
        text = jax.jit(int_layers.IntConv(7, (1, 1), spec=spec).apply).lower(iv, x).as_text()
        assert "dot_general" in text and "convolution" not in text  # the dot path, not a conv


@pytest.mark.parametrize(
    "spec",
    [None, QuantSpec(w_bits=4, a_bits=4), QuantSpec(w_bits=8, a_bits=8, a_granularity="per_tensor")],
    ids=["float", "w4a4", "w8a8_per_tensor_codes"],
)
def test_channel_padding_changes_nothing_but_the_kernel_shapes(spec):
    """10 -> 14 channels padded to 16 inside the conv: same outputs, same gradients, same params."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 10)) + 1.0
    plain = QConv(14, (3, 3), spec=spec)
    padded = QConv(14, (3, 3), spec=spec, backend=ConvBackend(channel_multiple=8))
    v = plain.init(jax.random.key(1), x, train=True)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, padded.init(jax.random.key(1), x, train=True))
    v = {**v, "quant_stats": jax.tree.map(lambda b: jnp.full_like(b, 2.5), v.get("quant_stats", {}))}

    def loss(model, params, x):
        return jnp.sum(jnp.sin(model.apply({**v, "params": params}, x)))

    np.testing.assert_allclose(padded.apply(v, x), plain.apply(v, x), rtol=1e-6, atol=1e-6)
    g_plain = jax.grad(lambda p, x: loss(plain, p, x), argnums=(0, 1))(v["params"], x)
    g_padded = jax.grad(lambda p, x: loss(padded, p, x), argnums=(0, 1))(v["params"], x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_padded, g_plain)


def test_pad_channels_pads_counts_above_the_multiple_only():
    from qresnet.quant.layers import pad_channels

    x, k = jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 10))
    px, pk = pad_channels(x, k, 8)
    assert px.shape == (1, 4, 4, 3) and pk.shape == (3, 3, 3, 16)  # the stem's 3 inputs stay
    px, pk = pad_channels(jnp.ones((1, 4, 4, 20)), jnp.ones((1, 1, 20, 16)), 8)
    assert px.shape == (1, 4, 4, 24) and pk.shape == (1, 1, 24, 16)
    assert float(jnp.sum(px)) == 16 * 20 and float(jnp.sum(pk)) == 20 * 16  # the padding is zeros
    assert pad_channels(x, k, 0)[1].shape == k.shape


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)], ids=["triton", "strided_falls_back_to_xla"])
@pytest.mark.parametrize(
    "spec",
    [None, QuantSpec(w_bits=4, a_bits=4), QuantSpec(w_bits=8, a_bits=8, a_granularity="per_tensor")],
    ids=["float", "w4a4", "w8a8_per_tensor_codes"],
)
def test_pallas_conv_impl_is_the_same_layer(spec, strides):
    """conv_impl="pallas" (Triton kernels; Pallas's interpreter here): XLA's outputs and gradients
    to bf16 rounding, the same parameters; a strided conv falls back to XLA's, exactly."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 10)) + 1.0
    kw = dict(strides=strides, padding=((1, 1), (1, 1)), spec=spec, dtype=jnp.bfloat16)
    xla = QConv(14, (3, 3), backend=ConvBackend(channel_multiple=8), **kw)
    pallas = QConv(14, (3, 3), backend=ConvBackend("pallas", channel_multiple=8), **kw)
    v = xla.init(jax.random.key(1), x, train=True)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, pallas.init(jax.random.key(1), x, train=True))
    v = {**v, "quant_stats": jax.tree.map(lambda b: jnp.full_like(b, 2.5), v.get("quant_stats", {}))}

    def grads(model):
        def loss(params, x):
            return jnp.sum(jnp.sin(model.apply({**v, "params": params}, x).astype(jnp.float32)))

        return jax.grad(loss, argnums=(0, 1))(v["params"], x)

    exact = strides != (1, 1)
    y_x, y_p = (np.asarray(m.apply(v, x), np.float32) for m in (xla, pallas))
    np.testing.assert_allclose(y_p, y_x, rtol=0, atol=0 if exact else 2e-2 * np.abs(y_x).max())
    g_x, g_p = grads(xla), grads(pallas)
    atol = 0 if exact else 2e-2 * max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g_x))
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_x)):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def test_conv_backend_checks_its_fields():
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        ConvBackend("cudnn")
    with pytest.raises(ValueError, match="channel_multiple must be an int >= 0"):
        ConvBackend(channel_multiple=-8)
    with pytest.raises(ValueError, match="pallas_max_channels must be an int >= 1"):
        ConvBackend(pallas_max_channels=0)
    assert ConvBackend() == ConvBackend("xla", 0, 32)  # frozen, hashable: a static module field


def test_pow2_scale_reaches_every_quantizer_of_a_layer():
    """Outside the code domain too (per-channel activations: the layer multiplies fake-quantized values;
    weight-only layers), pow2_scale rounds each scale down to a power of two."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    for spec in (QuantSpec(w_bits=4, a_bits=4, pow2_scale=True), QuantSpec(w_bits=8, pow2_scale=True)):
        layer = QConv(3, (3, 3), spec=spec)
        v = layer.init(jax.random.key(1), x)
        _, stats = layer.apply(v, x, train=True, act_quant=False, mutable=["quant_stats"])
        v = {**v, **stats}
        w = v["params"]["kernel"]
        w_q = ops.fake_quant_weight(w, spec.w_bits, "per_channel", pow2=True)
        step = 2.0 ** -jnp.floor(jnp.log2((2 ** (spec.w_bits - 1) - 1) / jnp.max(jnp.abs(w), axis=(0, 1, 2))))
        np.testing.assert_array_equal(np.asarray(w_q / step), np.round(np.asarray(w_q / step)))  # on the 2^-e grid
        x_q = x
        if spec.a_bits:
            bound = v["quant_stats"]["act_bound"]
            x_q = ops.fake_quant(x, spec.a_bits, bound, bool(spec.a_signed), pow2=True)
        expected = lax.conv_general_dilated(x_q, w_q, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(np.asarray(layer.apply(v, x)), np.asarray(expected), rtol=1e-6, atol=1e-6)
        plain = QConv(3, (3, 3), spec=dataclasses.replace(spec, pow2_scale=False))
        assert not np.allclose(np.asarray(plain.apply(v, x)), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_standardized_kernels_make_a_layer_blind_to_the_kernels_scale_and_offset():
    """w_standardize: the layer quantizes (W - mean) / std, so a kernel scaled and shifted as a whole gives
    the same output, in both layer paths; and the learned bound starts from the standardized kernel."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    for a_granularity in ("per_channel", "per_tensor"):
        spec = QuantSpec(w_bits=2, a_bits=8, w_bound="lsq", a_bound="lsq", a_signed=True, a_granularity=a_granularity)
        std = dataclasses.replace(spec, w_standardize=True)
        layer = QConv(5, (3, 3), spec=std, use_bias=False)
        v = layer.init(jax.random.key(1), x)
        kernel = v["params"]["kernel"]
        moved = {**v, "params": {**v["params"], "kernel": 7.0 * kernel + 0.3}}
        y, y_moved = layer.apply(v, x), layer.apply(moved, x)
        np.testing.assert_allclose(y_moved, y, rtol=1e-4, atol=1e-4 * float(jnp.abs(y).max()))
        # The same as the plain layer given the standardized kernel (its bound started from it too).
        plain = QConv(5, (3, 3), spec=spec, use_bias=False)
        given = {**v, "params": {**v["params"], "kernel": ops.standardize(kernel)}}
        np.testing.assert_allclose(plain.apply(given, x), y, rtol=1e-5, atol=1e-5 * float(jnp.abs(y).max()))
        axes = ops.reduction_axes(kernel.ndim, "per_channel")
        start = ops.lsq_init_bound(ops.standardize(kernel), 2, True, axes)
        np.testing.assert_allclose(v["quant_stats"]["kernel_bound"], start, rtol=1e-6)
