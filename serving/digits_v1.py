"""The digits.v1 API (``protos/digits/v1/digits.proto``): its codec, messages <-> arrays and back.

digits.v1 is served over gRPC only (``serving/digits_servicer.py``), but it has its own codec like the
other two protocols (``tfs``, ``v2``), so its servicer is as thin as theirs and the pixel forms, the
version rule and the metadata it reports are read in one place.
"""

from __future__ import annotations

import json
import math

import numpy as np

import modelrepo
from digits.v1 import digits_pb2

from .errors import InvalidInput
from .model_store import LoadedModel
from .validation import images_from_floats, images_from_uint8


def requested_version(model_version: int) -> int | None:
    """``model_version`` as the data plane takes it: 0 means the newest (None); negative is an error."""
    if model_version < 0:
        raise InvalidInput(f"model_version must be >= 0 (0: newest), got {model_version}")
    return model_version or None


def images(request: digits_pb2.PredictRequest, max_images: int) -> np.ndarray:
    """The request's pixels (``uint8_pixels`` or ``float_pixels``) as float32 [N, 28, 28]."""
    kind = request.WhichOneof("pixels")
    if kind == "uint8_pixels":
        return images_from_uint8(request.uint8_pixels, request.num_images, max_images)
    if kind == "float_pixels":
        values = np.asarray(request.float_pixels.values, np.float32)
        return images_from_floats(values, request.num_images, max_images, "float_pixels")
    raise InvalidInput("the request has no pixels: set uint8_pixels or float_pixels")


def predict_response(
    model: LoadedModel, probabilities: np.ndarray, classes: np.ndarray
) -> digits_pb2.PredictResponse:
    return digits_pb2.PredictResponse(
        model_name=model.name,
        model_version=model.version,
        digits=classes.tolist(),
        confidences=probabilities.max(axis=1).tolist(),
        probabilities=probabilities.ravel().tolist(),
    )


def metadata_response(
    latest: LoadedModel, versions: list[LoadedModel], max_images: int
) -> digits_pb2.GetModelMetadataResponse:
    """The newest version's input contract, and every loaded version with its scores."""
    contract = latest.metadata.input
    return digits_pb2.GetModelMetadataResponse(
        model_name=latest.name,
        default_version=latest.version,
        versions=[_version_info(loaded) for loaded in versions],
        input=digits_pb2.InputContract(
            signature_name=modelrepo.SIGNATURE_NAME,
            input_key=modelrepo.INPUT_KEY,
            shape=[-1, *modelrepo.IMAGE_SHAPE],
            dtype=modelrepo.INPUT_DTYPE,
            min_value=contract.value_range[0],
            max_value=contract.value_range[1],
            max_images_per_request=max_images,
            description=contract.description,
        ),
    )


def _version_info(loaded: LoadedModel) -> digits_pb2.ModelVersion:
    metadata = loaded.metadata
    return digits_pb2.ModelVersion(
        version=loaded.version,
        val_accuracy=math.nan if metadata.val_accuracy is None else metadata.val_accuracy,
        test_accuracy=math.nan if metadata.test_accuracy is None else metadata.test_accuracy,
        created_at=metadata.created_at.isoformat(),
        tuner=metadata.tuner,
        hyperparameters_json=json.dumps(modelrepo.to_jsonable(metadata.hyperparameters), sort_keys=True),
    )
