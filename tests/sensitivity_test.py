"""Per-layer sensitivity: Hutchinson's trace estimate and the weight damage, on the CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qresnet import sensitivity


def test_hutchinson_trace_matches_the_exact_trace_of_a_quadratic():
    a = np.random.default_rng(0).normal(size=(10, 10))
    h = jnp.asarray(a @ a.T)
    params = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.full((4,), 0.5)}}

    def loss(p, batch):
        x = jnp.concatenate([p["a"]["kernel"].ravel(), p["b"]["kernel"].ravel()])
        return 0.5 * x @ h @ x

    traces = sensitivity.hutchinson_traces(loss, params, [None], jax.random.key(0), 1000)
    assert traces[("a", "kernel")] == pytest.approx(float(jnp.trace(h[:6, :6])), rel=0.06)
    assert traces[("b", "kernel")] == pytest.approx(float(jnp.trace(h[6:, 6:])), rel=0.06)


def test_weight_damage_is_trace_per_weight_times_the_squared_quantization_error():
    # One output channel [1.0, 0.3] at 2 bits: bound 1, s = 1, codes 1 and 0: error 0.3^2 = 0.09.
    kernel = np.array([[1.0], [0.3]], np.float32)
    assert sensitivity.weight_damage(kernel, trace=2.0, bits=2) == pytest.approx(2.0 / 2 * 0.09, rel=1e-5)
    assert sensitivity.weight_damage(kernel, trace=2.0, bits=8) < sensitivity.weight_damage(kernel, 2.0, 2)


def test_lsq_full_quantizes_as_the_best_uniform_settings_start():
    """ "lsq_full": the full kernel grid, from max|W| at 3 or more bits (w3a3_ends8_full_max) and from LSQ's
    start at 2 (w2a2_ends8_full)."""
    from qresnet.quant import ops

    kernel = jnp.array([[1.0], [0.3], [-1.0], [-0.6]])
    # 3 bits from max|W| = 1: s = 3, codes -4..3, so -1.0 -> -3/3 and 0.3 -> 1/3 as on the symmetric grid.
    np.testing.assert_allclose(sensitivity.quantize_weight(kernel, 3, "lsq_full")[:, 0], [1.0, 1 / 3, -1.0, -2 / 3])
    # 2 bits from LSQ's start: bound 2 mean|W| = 1.45, codes -2..1, so -1.0 -> -1.45 (ternary would also give it).
    bound = ops.lsq_init_bound(kernel, 2, True, (0,))
    expected = np.clip(np.floor(np.asarray(kernel) / bound + 0.5), -2, 1) * bound
    np.testing.assert_allclose(sensitivity.quantize_weight(kernel, 2, "lsq_full"), expected, rtol=1e-6)
    low = jnp.array([[0.1], [-1.0], [0.1], [0.1]])  # -1 reaches the extra code -2 only on the full grid
    full = sensitivity.quantize_weight(low, 2, "lsq_full")
    assert float(full[1, 0]) == pytest.approx(-2 * float(ops.lsq_init_bound(low, 2, True, (0,))[0]), rel=1e-6)
    assert float(sensitivity.quantize_weight(low, 2, "lsq")[1, 0]) > float(full[1, 0])
