"""Inverse-frequency case weights for ``sampler=weighted`` (training split only).

For one label, case ``i`` of class ``c`` gets ``n / (K * n_c)``: every class then carries the same
total weight and the mean weight is 1. With several labels a case's weight is the *mean* of its
per-label weights. The mean (not the product) keeps weights bounded when rare classes of different
labels coincide; each label is then balanced approximately rather than exactly, which is the usual
trade-off when one sampler must serve several heads. Survival labels are balanced on the event
indicator (events vs censored cases). Regression labels have no classes and cannot be weighted.
"""

from __future__ import annotations

import numpy as np


def inverse_frequency_weights(codes: np.ndarray) -> np.ndarray:
    """Case weights from integer class codes of shape (n_cases, n_labels) (or (n_cases,))."""
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    n = codes.shape[0]
    per_label = np.empty(codes.shape, dtype=np.float64)
    for j in range(codes.shape[1]):
        values, inverse, counts = np.unique(codes[:, j], return_inverse=True, return_counts=True)
        per_label[:, j] = n / (len(values) * counts[inverse])
    return per_label.mean(axis=1)
