"""Training-time distortions of the digits: one random affine map plus an elastic field, in one resampling.

Simard, Steinkraus and Platt (2003) took a plain MLP to 99.3% on MNIST by training on distorted digits:
small affine maps (rotation, scale, shear, translation) and elastic distortions (a smooth random field of
pixel displacements). ``RandomDistortion`` draws both per image and per step, composes them into one
sampling grid and resamples the image bilinearly once (zero outside the frame), so the cost is a few
element-wise ops and four gathers per pixel whatever is switched on. The smooth field is drawn on a
coarse ``elastic_grid`` x ``elastic_grid`` lattice of uniform displacements (up to ``elastic_pixels``)
and upsampled bicubically: the same kind of field as Simard's Gaussian-smoothed noise at a fraction of
its cost (a 25-tap blur per image made each epoch 2x slower here; the lattice costs nothing measurable).

The layer is a Keras preprocessing step inside the model: random in training, the identity at inference,
so the exported SavedModel serves undistorted images with no trace of it.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

SIZE = 28  # MNIST images are SIZE x SIZE


@keras.saving.register_keras_serializable(package="jobs")
class RandomDistortion(keras.layers.Layer):
    """Random affine map + elastic field on [N, 28, 28] images, training only.

    Each image gets its own rotation in [-rotation_degrees, +rotation_degrees], scale in [1 - zoom, 1 + zoom],
    horizontal shear in [-shear_degrees, +shear_degrees], shift in [-translate_pixels, +translate_pixels]
    on each axis, and an elastic displacement of up to ``elastic_pixels`` at the nodes of an
    ``elastic_grid``-sized lattice (0 turns a part off).
    """

    def __init__(
        self,
        *,
        rotation_degrees: float = 0.0,
        zoom: float = 0.0,
        shear_degrees: float = 0.0,
        translate_pixels: float = 0.0,
        elastic_pixels: float = 0.0,
        elastic_grid: int = 4,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        # Geometry in float32 even under mixed precision (runtime.mixed_precision, the GPU path): pixel
        # coordinates near 27 in float16 are off by up to 1/64 of a pixel, and the Dense layers cast anyway.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0 <= zoom < 1:
            raise ValueError(f"zoom must lie in [0, 1), got {zoom}")
        if elastic_grid < 2:
            raise ValueError(f"elastic_grid must be at least 2, got {elastic_grid}")
        self.rotation_degrees = float(rotation_degrees)
        self.zoom = float(zoom)
        self.shear_degrees = float(shear_degrees)
        self.translate_pixels = float(translate_pixels)
        self.elastic_pixels = float(elastic_pixels)
        self.elastic_grid = int(elastic_grid)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        centre = (SIZE - 1) / 2.0
        rows, cols = np.meshgrid(np.arange(SIZE) - centre, np.arange(SIZE) - centre, indexing="ij")
        self._rows = rows.astype("float32")  # output pixel coordinates relative to the centre
        self._cols = cols.astype("float32")
        self._upsample = _bicubic_matrix(self.elastic_grid, SIZE)

    def _uniform(self, shape: tuple, limit: float):
        return keras.random.uniform(shape, -limit, limit, seed=self.seed_generator)

    def call(self, images, training=None):
        if not training:
            return images
        n = ops.shape(images)[0]
        per_image = (n, 1, 1)
        angle = self._uniform(per_image, math.radians(self.rotation_degrees))
        shear = ops.tan(self._uniform(per_image, math.radians(self.shear_degrees)))
        scale = 1.0 + self._uniform(per_image, self.zoom)
        rows, cols = ops.convert_to_tensor(self._rows), ops.convert_to_tensor(self._cols)
        # Inverse map, output pixel -> source pixel: rotate, shear, unscale, then shift and re-centre.
        cos, sin = ops.cos(angle), ops.sin(angle)
        centre = (SIZE - 1) / 2.0
        src_cols = (cos * cols - sin * rows + shear * rows) / scale + centre
        src_rows = (sin * cols + cos * rows) / scale + centre
        src_cols = src_cols - self._uniform(per_image, self.translate_pixels)
        src_rows = src_rows - self._uniform(per_image, self.translate_pixels)
        if self.elastic_pixels > 0:
            lattice = self._uniform((n, self.elastic_grid, self.elastic_grid, 2), self.elastic_pixels)
            # Bicubic upsampling is separable and linear: U @ lattice @ U^T, two small matmuls (XLA-friendly,
            # unlike the resize op, so the whole training step can be compiled).
            upsample = ops.convert_to_tensor(self._upsample)
            field = ops.einsum("ri,nijk,cj->nrck", upsample, lattice, upsample)
            src_cols = src_cols + field[..., 0]
            src_rows = src_rows + field[..., 1]
        return _bilinear(images, src_rows, src_cols)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "rotation_degrees": self.rotation_degrees,
            "zoom": self.zoom,
            "shear_degrees": self.shear_degrees,
            "translate_pixels": self.translate_pixels,
            "elastic_pixels": self.elastic_pixels,
            "elastic_grid": self.elastic_grid,
            "seed": self.seed,
        }


def _bicubic_matrix(grid: int, size: int) -> np.ndarray:
    """[size, grid]: 1-D bicubic upsampling as ``ops.image.resize`` does it (half-pixel centres)."""
    basis = np.eye(grid, dtype="float32").reshape(grid, grid, 1, 1)  # grid one-hot columns, as images
    resized = ops.image.resize(basis, (size, 1), interpolation="bicubic", data_format="channels_last")
    return np.asarray(ops.convert_to_numpy(resized))[:, :, 0, 0].T


def _bilinear(images, rows, cols):
    """Sample ``images`` [N, S, S] at fractional (rows, cols) [N, S, S]; zero outside the image."""
    n = ops.shape(images)[0]
    padded = ops.reshape(ops.pad(images, [[0, 0], [1, 1], [1, 1]]), (-1,))  # a zero border of one pixel
    width = SIZE + 2
    offsets = ops.reshape(ops.arange(n, dtype="int32") * width * width, (-1, 1, 1))
    row0, col0 = ops.floor(rows), ops.floor(cols)
    weight_r, weight_c = rows - row0, cols - col0

    def pixel(r, c):
        # +1 for the border; anything further out reads the border's zeros.
        r = ops.cast(ops.clip(r + 1, 0, SIZE + 1), "int32")
        c = ops.cast(ops.clip(c + 1, 0, SIZE + 1), "int32")
        return ops.take(padded, offsets + r * width + c)

    return (
        pixel(row0, col0) * (1 - weight_r) * (1 - weight_c)
        + pixel(row0, col0 + 1) * (1 - weight_r) * weight_c
        + pixel(row0 + 1, col0) * weight_r * (1 - weight_c)
        + pixel(row0 + 1, col0 + 1) * weight_r * weight_c
    )
