"""Classes drawn from the noise (model.classes_from_noise): a sample's class is the argmax of the first
K entries of its z. Torch-free, for NumPy arrays and torch tensors alike: the ONNX side (inference,
the service) and the torch side (evaluation) ask for a class the same way."""

from __future__ import annotations

from typing import Any


def with_classes(z: Any, classes: Any, k: int) -> Any:
    """A copy of the latents `z` [N, D] (NumPy or torch) whose classes are `classes` [N]: in each row
    the largest of the first k entries trades places with the entry of the class asked for. For
    z ~ N(0, I) that is exactly a draw of z given its class (the k entries are exchangeable), so the
    samples of a class are as varied as the generator makes them."""
    z = z.clone() if hasattr(z, "clone") else z.copy()
    rows = list(range(len(z)))
    top = z[:, :k].argmax(1)
    z[rows, top], z[rows, classes] = z[rows, classes], z[rows, top]
    return z
