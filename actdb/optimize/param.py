"""Image parameterizations: what gradient ascent changes, and how it becomes pixels.

`fft`: lucid's Fourier parameterization (random spectrum scaled by 1/f, inverse real FFT,
ImageNet colour decorrelation, sigmoid), which makes the optimizer favour natural-looking
low frequencies. `pixel` and `pattern` optimize pixels directly, exactly as the notebooks did.
Every image is initialized from its own key, so it does not depend on its batch mates.
"""
from __future__ import annotations

import numpy as np

from ..tfquiet import import_tensorflow

tf = import_tensorflow()

# lucid optvis/param/color.py: square root of the ImageNet colour correlation (SVD), columns normalized
COLOR_CORRELATION_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
SPECTRUM_SD = 0.01
DECAY_POWER = 1.0


def rfft2d_freqs(size: int) -> np.ndarray:
    """Frequency magnitude of every coefficient of a size x size real 2-D FFT."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[: size // 2 + 1 + size % 2]
    return np.sqrt(fx * fx + fy * fy)


class FourierImage:
    """Batch of images as (N, 2, 3, H, W//2+1) real/imaginary spectra; `pixels` gives [0, 1] RGB."""

    def __init__(self, size: int, decay_power: float = DECAY_POWER):
        self.size = size
        freqs = rfft2d_freqs(size)
        self.spectrum_shape = (2, 3, *freqs.shape)
        scale = 1.0 / np.maximum(freqs, 1.0 / size) ** decay_power * size  # times sqrt(w * h)
        self.scale = tf.constant(scale.astype(np.float32))

    def init(self, keys: tf.Tensor) -> tf.Tensor:
        """One random spectrum per image, drawn from that image's own key (N, 2)."""
        return tf.map_fn(lambda key: tf.random.stateless_normal(self.spectrum_shape, key, stddev=SPECTRUM_SD),
                         keys, fn_output_signature=tf.float32)

    def pixels(self, params: tf.Tensor) -> tf.Tensor:
        spectrum = tf.complex(params[:, 0], params[:, 1]) * tf.cast(self.scale, tf.complex64)
        image = tf.signal.irfft2d(spectrum, fft_length=[self.size, self.size])  # (N, 3, H, W)
        image = tf.transpose(image, (0, 2, 3, 1)) / 4.0
        decorrelated = tf.einsum("nhwc,dc->nhwd", image, tf.constant(COLOR_CORRELATION))
        return tf.sigmoid(decorrelated)
