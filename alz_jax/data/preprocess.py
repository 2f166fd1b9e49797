"""The one preprocessing path from stored JPEG bytes to a model input, shared by every consumer.

Training-time evaluation, `evaluate`, prediction and later consumers all call `to_model_input`;
training passes a random crop box to the same function. Images stay single-channel uint8 until
they reach the device, where `normalize` runs inside the jitted step.
"""

from __future__ import annotations

import cv2
import numpy as np

BACKGROUND = 0  # skull-stripped ADNI slices have a black background


class DecodeError(ValueError):
    """Raised when bytes are not a decodable image; the message names the file when known."""


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decodes JPEG or PNG bytes (grayscale or colour) to a 2-D uint8 grayscale array."""
    if not data:
        raise DecodeError(f"{name}: empty file (0 bytes)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error:
        image = None
    if image is None:
        raise DecodeError(f"{name}: not a decodable JPEG/PNG image ({len(data)} bytes)")
    return image


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pads a 2-D image with background, centred, to a square of its longer side."""
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(
        image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=BACKGROUND
    )


def to_model_input(
    image: np.ndarray, size: int, crop_box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Pads a 2-D uint8 image to a square, optionally crops (top, left, h, w), resizes to size.

    Returns uint8 of shape (size, size, 1).
    """
    square = pad_to_square(image)
    if crop_box is not None:
        top, left, h, w = crop_box
        square = square[top : top + h, left : left + w]
    shrinking = square.shape[0] > size or square.shape[1] > size
    out = cv2.resize(
        square, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    return out[:, :, None]


def normalize(images, mean: float, std: float):
    """uint8 images (any array library) to float32 `(x / 255 - mean) / std`."""
    return (images.astype("float32") / 255.0 - mean) / std
