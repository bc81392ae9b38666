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
