"""Export a trained Keras model as a versioned SavedModel in the model repository.

The serving signature takes raw pixels (float32 [N, 28, 28], 0..255) under ``images`` and returns
``probabilities`` (float32 [N, 10]) and ``classes`` (int64 [N]); see :mod:`modelrepo`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

import modelrepo

log = logging.getLogger(__name__)


def write_saved_model(model: keras.Model, path: Path) -> None:
    """Write ``model`` as a SavedModel with the repository's serving signature into ``path``."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tf.cast(model(images, training=False), tf.float32)
        return {
            modelrepo.OUTPUT_PROBABILITIES: probabilities,
            modelrepo.OUTPUT_CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        }

    archive.add_endpoint(
        name=modelrepo.SIGNATURE_NAME,
        fn=serve,
        input_signature=[
            tf.TensorSpec(
                shape=[None, *modelrepo.IMAGE_SHAPE],
                dtype=tf.as_dtype(modelrepo.INPUT_DTYPE),
                name=modelrepo.INPUT_KEY,
            )
        ],
    )
    archive.write_out(str(path), verbose=False)


def export_model(model: keras.Model, root: Path | str, metadata: modelrepo.ModelMetadata) -> tuple[int, Path]:
    """Publish ``model`` with ``metadata`` as the next version of ``metadata.model_name`` under ``root``."""
    version, path = modelrepo.publish(root, metadata, lambda staging: write_saved_model(model, staging))
    log.info("exported %s version %d to %s", metadata.model_name, version, path)
    return version, path
