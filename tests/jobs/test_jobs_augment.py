"""The training-time distortions (jobs/augment.py) and how the search space wires them in."""

from __future__ import annotations

import keras
import keras_tuner as kt
import numpy as np
import pytest

from jobs import config as cfg
from jobs.augment import RandomDistortion, _bicubic_matrix, _bilinear
from jobs.search_space import MlpHyperModel, build_mlp


def digits(n: int = 32, seed: int = 0) -> np.ndarray:
    """Blobs of ink well inside the frame, so small distortions keep them in view."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        r, c = rng.integers(9, 15, size=2)
        images[i, r : r + 6, c : c + 5] = rng.uniform(0.5, 1.0, (6, 5))
    return images


def centre_of_mass(images: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[:28, :28]
    mass = images.sum(axis=(1, 2))
    return np.stack([(images * rows).sum(axis=(1, 2)) / mass, (images * cols).sum(axis=(1, 2)) / mass], 1)


def test_bilinear_samples_shifted_pixels_and_zeros_outside() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
    rows, cols = np.mgrid[:28, :28].astype(np.float32)
    down = np.asarray(
        _bilinear(images, np.broadcast_to(rows - 1, (2, 28, 28)), np.broadcast_to(cols, (2, 28, 28)))
    )
    np.testing.assert_array_equal(down[:, 1:], images[:, :-1])  # each output row reads the row above
    np.testing.assert_array_equal(down[:, 0], 0)  # above the frame: zeros
    half = np.asarray(
        _bilinear(images, np.broadcast_to(rows, (2, 28, 28)), np.broadcast_to(cols + 0.5, (2, 28, 28)))
    )
    np.testing.assert_allclose(half[:, :, :-1], (images[:, :, :-1] + images[:, :, 1:]) / 2)


def test_elastic_field_is_the_bicubic_resize_of_its_lattice() -> None:
    lattice = np.random.default_rng(0).uniform(-1.5, 1.5, (3, 4, 4, 2)).astype(np.float32)
    resized = keras.ops.image.resize(lattice, (28, 28), interpolation="bicubic", data_format="channels_last")
    upsample = _bicubic_matrix(4, 28)
    np.testing.assert_allclose(
        np.einsum("ri,nijk,cj->nrck", upsample, lattice, upsample), np.asarray(resized), atol=1e-5
    )


def test_the_layer_compiles_with_xla() -> None:
    """The default preset trains with ``runtime.jit_compile: true``: every op needs an XLA kernel."""
    import tensorflow as tf

    layer = RandomDistortion(rotation_degrees=10, zoom=0.1, translate_pixels=2, elastic_pixels=1.5, seed=1)
    compiled = tf.function(lambda images: layer(images, training=True), jit_compile=True)
    out = np.asarray(compiled(tf.constant(digits())))
    assert out.shape == (32, 28, 28) and not np.array_equal(out, digits())


def test_identity_at_inference_and_when_everything_is_off() -> None:
    images = digits()
    on = RandomDistortion(
        rotation_degrees=15, zoom=0.1, shear_degrees=10, translate_pixels=2, elastic_pixels=2
    )
    np.testing.assert_array_equal(np.asarray(on(images, training=False)), images)
    np.testing.assert_array_equal(np.asarray(RandomDistortion()(images, training=True)), images)


@pytest.mark.parametrize(
    ("kwargs", "max_shift"),
    [
        ({"translate_pixels": 2}, 2.01),
        ({"rotation_degrees": 15, "zoom": 0.1, "shear_degrees": 10}, 2.5),
        ({"elastic_pixels": 1.5, "elastic_grid": 4}, 2.5),
    ],
)
def test_training_distorts_each_image_within_its_bounds(kwargs: dict, max_shift: float) -> None:
    images = digits()
    layer = RandomDistortion(seed=3, **kwargs)
    out = np.asarray(layer(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    changed = np.abs(out - images).reshape(len(images), -1).max(axis=1) > 0.05
    assert changed.all(), "every image gets its own draw"
    assert out.min() >= 0 and out.max() <= images.max() + 1e-6  # bilinear: convex combinations of pixels
    # Small distortions keep most of the ink (elastic ones thicken or thin strokes), and move its
    # centre by at most the distortion's size.
    np.testing.assert_allclose(out.sum(axis=(1, 2)), images.sum(axis=(1, 2)), rtol=0.5)
    moved = np.linalg.norm(centre_of_mass(out) - centre_of_mass(images), axis=1)
    assert moved.max() <= max_shift * np.sqrt(2), moved.max()
    second = np.asarray(layer(images, training=True))
    assert np.abs(second - out).max() > 0.05, "a new draw on each step"


def values(**extra: float) -> dict:
    return {
        "num_layers": 1,
        "units_0": 16,
        "dropout": 0.0,
        "learning_rate": 1e-3,
        "batch_size": 32,
        "lr_schedule": "constant",
        "translate_pixels": 0,
        "label_smoothing": 0.0,
        **extra,
    }


def test_the_model_has_the_layer_only_when_a_distortion_is_set() -> None:
    plain = build_mlp(values(), steps_per_epoch=1, epochs=1)
    assert "distort" not in [layer.name for layer in plain.layers]
    distorted = build_mlp(values(rotation_degrees=10.0, elastic_pixels=1.5, elastic_grid=5), 1, 1)
    layer = distorted.get_layer("distort")
    assert (layer.rotation_degrees, layer.elastic_pixels, layer.elastic_grid) == (10.0, 1.5, 5)
    images = digits(8) * 255
    # Inference ignores it: the same weights give the same answer with or without the layer.
    plain.set_weights(distorted.get_weights())
    np.testing.assert_allclose(
        distorted.predict(images, verbose=0), plain.predict(images, verbose=0), rtol=1e-5
    )
    restored = keras.models.model_from_json(distorted.to_json())  # registered: tuner checkpoints reload it
    assert restored.get_layer("distort").get_config()["elastic_grid"] == 5


def test_mixed_precision_keeps_the_distortion_in_float32() -> None:
    # runtime.mixed_precision (the GPU path): the model must build and train with the layer in it.
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_mlp(values(rotation_degrees=10.0, elastic_pixels=1.0), steps_per_epoch=1, epochs=1)
        assert model.get_layer("distort").compute_dtype == "float32"
        history = model.fit(digits(8) * 255, np.eye(10, dtype=np.float32)[np.arange(8)], verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_ema_momentum_turns_on_the_optimizers_weight_average() -> None:
    # Keras' fit() then ends by writing the averaged weights into the model (its trainer's own code).
    model = build_mlp(values(ema_momentum=0.9), steps_per_epoch=4, epochs=1)
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.9
    assert not build_mlp(values(), 4, 1).optimizer.use_ema


def declared(space: dict) -> list[str]:
    config = cfg.load_config("seed", environ={}, cli={"space": space})
    hp = kt.HyperParameters()
    MlpHyperModel(config.space, train_size=100, epochs=1).declare(hp)
    return [p.name for p in hp.space]


def test_unset_distortions_are_not_declared_so_the_seed_search_samples_as_before() -> None:
    # Random search draws one value per declared hyperparameter: a new one would change every later draw.
    assert declared({"num_layers": 2}) == [
        "num_layers", "units_0", "units_1", "dropout", "learning_rate", "batch_size", "lr_schedule",
        "translate_pixels", "label_smoothing",
    ]  # fmt: skip
    both = declared({"num_layers": 2, "zoom": 0.1, "elastic_pixels": 1.0, "ema_momentum": [0.99, 0.999]})
    assert {"zoom", "elastic_pixels", "elastic_grid", "ema_momentum"} <= set(both)
    assert "rotation_degrees" not in both and "shear_degrees" not in both
