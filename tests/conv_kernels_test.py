"""conv_kernels: the Triton 3x3 convs equal XLA's (Pallas interpreter on CPU) and lower for CUDA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from qresnet import conv_kernels


def _xla(x, k):
    return lax.conv_general_dilated(
        x.astype(jnp.float32),
        k.astype(jnp.float32),
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )


def _operands(n, h, w, c, co, seed=0):
    kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, h, w, c)).astype(jnp.bfloat16)
    k = (0.3 * jax.random.normal(kk, (3, 3, c, co))).astype(jnp.bfloat16)
    return x, k, jax.random.normal(kg, (n, h, w, co))


# bf16 outputs and gradients: relative error up to a few bf16 roundings of the largest value.
TOL = 1e-2


@pytest.mark.parametrize(
    "shape",
    [(2, 5, 7, 3, 5), (2, 4, 5, 1, 16), (2, 6, 6, 16, 16), (1, 4, 4, 24, 40)],
    ids=["rgb_stem_odd_sizes", "grey_stem", "narrow_square", "channels_padded_to_32_and_64"],
)
def test_conv3x3_and_its_gradients_equal_xlas(shape):
    x, k, g = _operands(*shape)
    y = conv_kernels.conv3x3(x, k)
    assert y.shape == shape[:3] + (shape[4],) and y.dtype == jnp.bfloat16
    ref = _xla(x, k)
    assert float(jnp.abs(y.astype(jnp.float32) - ref).max()) <= TOL * float(jnp.abs(ref).max())
    mine = jax.grad(lambda x, k: jnp.sum(conv_kernels.conv3x3(x, k).astype(jnp.float32) * g), (0, 1))(x, k)
    theirs = jax.grad(lambda x, k: jnp.sum(_xla(x, k) * g), (0, 1))(x.astype(jnp.float32), k.astype(jnp.float32))
    for a, b, name in zip(mine, theirs, ("dx", "dkernel")):
        assert a.dtype == jnp.bfloat16, name
        err = float(jnp.abs(a.astype(jnp.float32) - b).max())
        assert err <= TOL * float(jnp.abs(b).max()), (name, err)


@pytest.mark.parametrize(
    "tuning",
    [
        conv_kernels.Tuning(fwd_block=32, wgrad_block=64, wgrad_steps=3),
        conv_kernels.Tuning(fwd_block=256, wgrad_block=16, wgrad_steps=1),
    ],
    ids=["smaller_blocks", "blocks_past_the_last_pixel"],
)
def test_tuning_variants_give_the_same_conv_and_gradients(monkeypatch, tuning):
    """The launch variants compute the same conv: against the defaults, to float32 summation order."""
    x, k, g = _operands(2, 6, 6, 16, 24)

    def run():
        y = conv_kernels.conv3x3(x, k)
        return (y, *jax.grad(lambda x, k: jnp.sum(conv_kernels.conv3x3(x, k).astype(jnp.float32) * g), (0, 1))(x, k))

    default = run()
    monkeypatch.setattr(conv_kernels, "TUNING", tuning)
    for a, b in zip(run(), default):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * np.abs(b).max())


def test_no_pixel_leaks_across_image_rows_or_images():
    """One bright pixel at an image's right edge: only its 3x3 neighbourhood in that image sees it."""
    x = jnp.zeros((2, 4, 4, 16), jnp.bfloat16).at[0, 1, 3, :].set(1.0)
    k = jnp.ones((3, 3, 16, 16), jnp.bfloat16)
    y = np.asarray(conv_kernels.conv3x3(x, k)[..., 0], np.float32)
    expected = np.zeros((2, 4, 4), np.float32)
    expected[0, 0:3, 2:4] = 16.0
    np.testing.assert_array_equal(y, expected)


def test_supported_takes_only_narrow_3x3_stride1_pad1_bf16_convs():
    ok = dict(x_shape=(8, 32, 32, 16), kernel_shape=(3, 3, 16, 16), strides=(1, 1), padding="SAME")
    assert conv_kernels.supported(**ok, dtype=jnp.bfloat16)
    assert conv_kernels.supported(**{**ok, "padding": ((1, 1), (1, 1))}, dtype=jnp.bfloat16)
    assert not conv_kernels.supported(**ok, dtype=jnp.float32)
    assert not conv_kernels.supported(**{**ok, "strides": (2, 2)}, dtype=jnp.bfloat16)
    assert not conv_kernels.supported(**{**ok, "kernel_shape": (1, 1, 16, 16)}, dtype=jnp.bfloat16)
    assert not conv_kernels.supported(**{**ok, "padding": "VALID"}, dtype=jnp.bfloat16)
    assert not conv_kernels.supported(**ok, dtype=jnp.bfloat16, max_channels=8)
    huge = {**ok, "x_shape": (4096, 512, 512, 16)}  # flat offsets past int32
    assert not conv_kernels.supported(**huge, dtype=jnp.bfloat16)


def test_kernels_lower_for_cuda(monkeypatch):
    """The Pallas -> Triton lowering (no GPU needed): a kernel the interpreter runs may not lower."""
    monkeypatch.setattr(conv_kernels, "_interpret", lambda: False)
    x = jnp.zeros((4, 8, 8, 16), jnp.bfloat16)
    k = jnp.zeros((3, 3, 16, 24), jnp.bfloat16)
    f = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(conv_kernels.conv3x3(x, k).astype(jnp.float32)), (0, 1)))
    text = f.trace(x, k).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 3  # forward, input gradient, kernel gradient
