"""Named numeric cases for the paper's quantizers, their gradients and bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qresnet.quant import ops


def _np_signed(x, bits, bound):
    s = (2 ** (bits - 1) - 1) / bound
    q = np.clip(np.floor(x * s + 0.5), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    return q / s


def _np_unsigned(x, bits, bound):
    s = 2**bits / bound
    return np.clip(np.floor(x * s), 0, 2**bits - 1) / s


@pytest.mark.parametrize(
    "name,x,expected",
    [
        # bits=4, bound=7 -> s=1: integer grid -7..7, round half up.
        ("tie_up_positive", 0.5, 1.0),
        ("tie_up_negative", -0.5, 0.0),
        ("tie_1_5", 1.5, 2.0),
        ("tie_minus_1_5", -1.5, -1.0),
        ("zero", 0.0, 0.0),
        ("beyond_bound", 9.3, 7.0),
        ("beyond_negative_bound", -100.0, -7.0),
        ("just_below_tie", 2.49, 2.0),
    ],
)
def test_signed_named_cases(name, x, expected):
    assert float(ops.fake_quant_signed(jnp.float32(x), 4, 7.0)) == expected, name


@pytest.mark.parametrize(
    "name,x,expected",
    [
        # bits=4, bound=16 -> s=1: floor onto 0..15.
        ("floor_not_round", 2.9, 2.0),
        ("zero", 0.0, 0.0),
        ("negative_to_zero", -3.0, 0.0),
        ("top_level_is_15_16_of_bound", 16.0, 15.0),
        ("beyond_bound", 1000.0, 15.0),
    ],
)
def test_unsigned_named_cases(name, x, expected):
    assert float(ops.fake_quant_unsigned(jnp.float32(x), 4, 16.0)) == expected, name


@pytest.mark.parametrize("bits", range(2, 9))
def test_signed_matches_formula_and_level_count(bits):
    x = np.linspace(-3, 3, 4001).astype(np.float32)
    out = np.asarray(ops.fake_quant_signed(jnp.asarray(x), bits, 2.0))
    np.testing.assert_allclose(out, _np_signed(x, bits, 2.0), rtol=1e-6, atol=1e-7)
    assert len(np.unique(out)) == 2**bits - 1  # -(2^(b-1)-1) .. 2^(b-1)-1


@pytest.mark.parametrize("bits", range(1, 9))
def test_unsigned_matches_formula_and_level_count(bits):
    x = np.linspace(-1, 3, 4001).astype(np.float32)
    out = np.asarray(ops.fake_quant_unsigned(jnp.asarray(x), bits, 2.0))
    np.testing.assert_allclose(out, _np_unsigned(x, bits, 2.0), rtol=1e-6, atol=1e-7)
    assert len(np.unique(out)) == 2**bits
    assert out.max() == pytest.approx(2.0 * (2**bits - 1) / 2**bits)


def test_one_bit_signed_is_binary():
    out = ops.fake_quant_signed(jnp.array([-2.0, -0.1, 0.0, 0.3, 5.0]), 1, 1.5)
    np.testing.assert_array_equal(out, [-1.5, -1.5, 1.5, 1.5, 1.5])


@pytest.mark.parametrize("fn", [ops.fake_quant_signed, ops.fake_quant_unsigned])
def test_zero_bound_is_finite_zero(fn):
    x = jnp.array([-1.0, 0.0, 2.0])
    out, grad = jax.value_and_grad(lambda x: fn(x, 4, 0.0).sum())(x)
    assert float(out) == 0.0
    np.testing.assert_array_equal(grad, 0.0)
    np.testing.assert_array_equal(fn(x, 4, 0.0), 0.0)


def test_straight_through_gradient_signed():
    x = jnp.array([-9.0, -7.0, -3.2, 0.0, 0.4, 6.9, 7.0, 7.2, 50.0])
    g = jax.grad(lambda x: ops.fake_quant_signed(x, 4, 7.0).sum())(x)
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 1, 1, 1, 0, 0])


def test_straight_through_gradient_unsigned():
    # bits 4, bound 16: clip range of x*s is [0, 15].
    x = jnp.array([-1.0, 0.0, 3.7, 15.0, 15.5, 20.0])
    g = jax.grad(lambda x: ops.fake_quant_unsigned(x, 4, 16.0).sum())(x)
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 0, 0])


def test_no_gradient_into_bound():
    g = jax.grad(lambda b: ops.fake_quant_signed(jnp.array([0.3, 0.9]), 4, b).sum())(1.0)
    assert float(g) == 0.0


def test_bound_broadcasts_per_channel():
    x = jnp.ones((2, 3)) * jnp.array([0.5, 1.0, 4.0])
    out = ops.fake_quant_signed(x, 8, jnp.array([1.0, 1.0, 2.0]))
    np.testing.assert_allclose(out[0], [0.5, 1.0, 2.0], atol=1e-2)


def test_bf16_input_keeps_dtype():
    out = ops.fake_quant_unsigned(jnp.ones((4,), jnp.bfloat16), 4, 2.0)
    assert out.dtype == jnp.bfloat16


def test_weight_bound_per_channel_and_tensor():
    w = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4) - 12.0
    np.testing.assert_array_equal(ops.weight_bound(w), [12.0, 11.0, 10.0, 11.0])
    assert float(ops.weight_bound(w, "per_tensor")) == 12.0
    wq = ops.fake_quant_weight(w, 8)
    np.testing.assert_allclose(jnp.max(jnp.abs(wq), axis=(0, 1)), [12.0, 11.0, 10.0, 11.0], rtol=1e-6)


def test_ema_update_excludes_all_zero_channels():
    ema = jnp.array([1.0, 2.0])
    x = jnp.stack([jnp.array([3.0, 0.0]), jnp.array([-5.0, 0.0])])
    m, nz = ops.batch_max_abs(x, "per_channel")
    np.testing.assert_array_equal(m, [5.0, 0.0])
    np.testing.assert_allclose(ops.ema_max_update(ema, m, nz, 0.1), [1.4, 2.0])


def test_lsq_gradient_matches_esser():
    # Signed 4 bits: qmax 7, step = bound/7. d x_hat / d step = q - x/step inside, +-qmax outside.
    bound, x = 7.0, jnp.array([0.3, 2.6, -1.2, 9.0, -8.0])
    grad = jax.grad(lambda b: ops.lsq_fake_quant(x, 4, b, True, 1.0).sum())(bound)
    step = bound / 7
    v = np.asarray(x) / step
    q = np.clip(np.floor(v + 0.5), -7, 7)
    inside = np.abs(v) <= 7
    d_step = np.where(inside, q - v, q)
    assert float(grad) == pytest.approx(d_step.sum() / 7, rel=1e-5)
    # The gradient scale multiplies the bound's gradient only.
    g_half = jax.grad(lambda b: ops.lsq_fake_quant(x, 4, b, True, 0.5).sum())(bound)
    assert float(g_half) == pytest.approx(0.5 * float(grad), rel=1e-5)
    gx = jax.grad(lambda x: ops.lsq_fake_quant(x, 4, bound, True, 1.0).sum())(x)
    np.testing.assert_array_equal(gx, inside.astype(np.float32))


def test_lsq_forward_is_the_fake_quantizer_to_the_bit():
    """The gradient scaling leaves the bound's value exact, so the integer model (which gets
    the bound itself) agrees with the trained layer to the bit."""
    x = jax.random.normal(jax.random.key(0), (4096,)) * 3
    for bound in np.random.default_rng(0).uniform(0.1, 9.0, 20).astype(np.float32):
        for scale in (0.37, 1e-3, 0.0123):
            np.testing.assert_array_equal(
                ops.lsq_fake_quant(x, 4, bound, False, scale), ops.fake_quant(x, 4, bound, False)
            )


def test_lsq_init_from_data():
    x = jnp.full((10, 3), 2.0)
    b = ops.lsq_init_bound(x, 4, True, (0,))
    np.testing.assert_allclose(b, 2 * 2.0 / np.sqrt(7) * 7, rtol=1e-6)


@pytest.mark.parametrize(
    "name,x,expected",
    [
        # bits=2, bound=1 -> s=1: the full grid -2..1 (LSQ's weights) where the symmetric one is -1..1.
        ("lowest_code", -1.7, -2.0),
        ("below_lowest_clips", -9.0, -2.0),
        ("tie_up", -1.5, -1.0),
        ("top_unchanged", 3.0, 1.0),
        ("zero", 0.2, 0.0),
    ],
)
def test_full_signed_grid_named_cases(name, x, expected):
    assert float(ops.lsq_fake_quant(jnp.float32(x), 2, 1.0, True, 1.0, full=True)) == expected, name
    q, s = ops.int_codes(jnp.float32(x), 2, 1.0, True, full=True)
    assert float(q / s) == expected, name


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_full_signed_grid_has_2_to_the_bits_levels_and_the_lsq_gradient(bits):
    x = np.linspace(-3, 3, 4001).astype(np.float32)
    out = np.asarray(ops.lsq_fake_quant(jnp.asarray(x), bits, 1.0, True, 1.0, full=True))
    assert len(np.unique(out)) == 2**bits
    assert ops.int_range(bits, True, full=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    # Straight through down to the extra code, LSQ's -Q_N at the clipped low end.
    n = 2 ** (bits - 1) - 1
    xs = jnp.array([-(n + 0.9) / n, -(n + 1.5) / n])
    gx = jax.grad(lambda v: ops.lsq_fake_quant(v, bits, 1.0, True, 1.0, full=True).sum())(xs)
    np.testing.assert_array_equal(gx, [1.0, 0.0])
    gb = jax.grad(lambda b: ops.lsq_fake_quant(xs[1:], bits, b, True, 1.0, full=True).sum())(1.0)
    assert float(gb) == pytest.approx(-(n + 1) / n, rel=1e-6)  # d(q * step)/d bound at q = -(n+1)


@pytest.mark.parametrize("full", [False, True])
def test_pass_outside_passes_the_gradient_beyond_the_bound_and_changes_nothing_else(full):
    """pass_outside (QuantSpec.w_ste="pass"): values past either end of the grid get the gradient they
    get inside; the output and the bound's gradient stay LSQ's."""
    x = jnp.array([-3.0, -0.4, 0.3, 2.5])  # the ends and two inside, for a bound of 1 at 2 bits
    quant = lambda v, b, p: ops.lsq_fake_quant(v, 2, b, True, 0.5, full=full, pass_outside=p)  # noqa: E731
    np.testing.assert_array_equal(quant(x, 1.0, True), quant(x, 1.0, False))
    gx = {p: jax.grad(lambda v, p=p: (quant(v, 1.0, p) * jnp.arange(1.0, 5.0)).sum())(x) for p in (False, True)}
    np.testing.assert_array_equal(gx[False], [0.0, 2.0, 3.0, 0.0])
    np.testing.assert_array_equal(gx[True], [1.0, 2.0, 3.0, 4.0])
    gb = [jax.grad(lambda b, p=p: (quant(x, b, p) * jnp.arange(1.0, 5.0)).sum())(1.0) for p in (False, True)]
    assert float(gb[0]) == float(gb[1]) != 0.0
    q, s = ops.lsq_ste_codes(x, 2, 1.0, True, 0.5, full=full, pass_outside=True)
    np.testing.assert_array_equal(q / s, quant(x, 1.0, False))


@pytest.mark.parametrize("bits,signed", [(1, True), (4, False)])
def test_full_grid_is_signed_of_two_or_more_bits(bits, signed):
    with pytest.raises(ValueError, match="full-range grid is a signed grid of 2 or more bits"):
        ops.int_range(bits, signed, full=True)


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_bad_bits_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        ops.fake_quant_signed(jnp.ones(2), bits, 1.0)


def test_pow2_scale_is_the_power_of_two_at_or_below_the_scale():
    for s, expected in [(1.0, 1.0), (1.5, 1.0), (0.75, 0.5), (2.0, 2.0), (127 / 3.3, 32.0), (2.0**-20 * 1.9, 2.0**-20)]:
        assert float(ops.pow2_floor(jnp.float32(s))) == expected
    x = jnp.linspace(-4.0, 4.0, 101)
    q, s = ops.int_codes(x, 8, jnp.float32(3.3), True, pow2=True)
    assert float(s) == 32.0  # 127 / 3.3 = 38.5 -> 32: the grid reaches 127 / 32 = 3.97 >= the bound
    assert float(jnp.max(jnp.abs(q))) == 127  # 4.0 clips
    q_ste, s_ste = ops.ste_codes(x, 8, jnp.float32(3.3), True, pow2=True)
    np.testing.assert_array_equal(np.asarray(q_ste), np.asarray(q))
    assert float(s_ste) == 32.0
    w = jnp.array([[0.5, -0.26], [0.1, 0.0]])
    _, s_w = ops.weight_ste_codes(w, 8, "per_tensor", pow2=True)
    assert float(s_w) == 128.0  # 127 / 0.5 = 254 -> 128


def test_bias_on_grid_is_half_a_step_off_the_grid_with_identity_gradient():
    bias = jnp.array([0.0, 0.30, -0.30, 1.0])
    s = jnp.float32(8.0)  # grid step 1/8
    np.testing.assert_array_equal(np.asarray(ops.bias_on_grid(bias, s)), [0.0625, 0.3125, -0.3125, 1.0625])
    g = jax.grad(lambda b: jnp.sum(ops.bias_on_grid(b, s) * jnp.arange(4.0)))(bias)
    np.testing.assert_array_equal(np.asarray(g), [0.0, 1.0, 2.0, 3.0])


def test_replica_bound_is_the_mean_of_each_replicas_max():
    """The paper's statistic: each replica's max, averaged over replicas (zero replicas left out)."""
    x = jnp.array(
        [[[1.0, 0.0]], [[-3.0, 0.0]], [[2.0, 0.0]], [[0.5, 4.0]]]  # 4 examples, 1 position, 2 channels
    )
    m, nonzero = ops.batch_max_abs(x, "per_channel", group=2)
    # channel 0: replicas {1, 3} and {2, 0.5} -> maxima 3 and 2 -> 2.5; channel 1: only the second
    # replica has a nonzero value (4), the all-zero first is left out -> 4.
    np.testing.assert_allclose(m, [2.5, 4.0])
    assert nonzero.tolist() == [True, True]
    whole, _ = ops.batch_max_abs(x, "per_channel")
    np.testing.assert_allclose(whole, [3.0, 4.0])  # over the whole batch: the larger max
    per_tensor, _ = ops.batch_max_abs(x, "per_tensor", group=2)
    assert float(per_tensor) == pytest.approx((3.0 + 4.0) / 2)
    with pytest.raises(ValueError, match="does not split into replicas of 3"):
        ops.batch_max_abs(x, "per_channel", group=3)


def test_standardize_is_zero_mean_unit_std_with_the_statistics_out_of_the_gradient():
    w = jnp.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, std sqrt(1.25)
    std = np.sqrt(1.25)
    np.testing.assert_allclose(ops.standardize(w), (np.array([1.0, 2.0, 3.0, 4.0]) - 2.5) / std, rtol=1e-6)
    # d/dw of sum(c * (w - mean) / std) with mean and std held: c / std, not the full Jacobian's (which sums to 0)
    c = jnp.array([1.0, -2.0, 0.5, 3.0])
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(c * ops.standardize(v)))(w), c / std, rtol=1e-6)
    np.testing.assert_array_equal(ops.standardize(jnp.full((3,), 0.7)), np.zeros(3))  # std 0: no division by 0
    assert ops.standardize(w.astype(jnp.bfloat16)).dtype == jnp.bfloat16
