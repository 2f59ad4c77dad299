"""Arithmetic counts of the detection pipeline, for the benchmarks' FLOP-based speed limit.

Networks are counted on a real forward pass by forward hooks on every convolution and linear
layer (multiply-adds; element-wise work such as BatchNorm, ReLU, pooling and additions is left
out, as it is small next to them): on the modules as written, the networks' nominal cost; on
their inference copies (``fers.evaluation.inference_copy``), what fers runs. Convolutions called
functionally (the factored pyramid pooling's first fuse, a few MFLOP) are not seen.
RX is counted from its formulas.
One multiply-add = 2 FLOPs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .tuning import gram_blocked_min_channels


def _layer_macs(module: nn.Module, inputs, output) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        kernel = int(torch.tensor(module.kernel_size).prod())
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = int(torch.tensor(module.kernel_size).prod())
        return output.numel() * (module.in_channels // module.groups) * kernel
    return 0


def count_macs(model: nn.Module, *inputs) -> OrderedDict:
    """Multiply-adds of one forward pass of ``model(*inputs)``, per layer (qualified name → count,
    in call order; a layer called twice counts twice) and in total under ``"total"``."""
    counts: OrderedDict = OrderedDict()
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            def hook(module, hook_inputs, output, name=name):
                counts[name] = counts.get(name, 0) + _layer_macs(module, hook_inputs, output)
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    counts["total"] = sum(counts.values())
    return counts


def network_flops(model: nn.Module, *inputs) -> int:
    """FLOPs (2 × multiply-adds) of one forward pass, per batch element (``inputs[0].shape[0]``)."""
    return 2 * count_macs(model, *inputs)["total"] // inputs[0].shape[0]


def rx_flops(pixels: int, channels: int, solver: str = "cholesky") -> dict:
    """FLOPs of global RX on one scene of ``pixels`` pixels and ``channels`` bands.

    Covariance ``ZᵀZ``: ``2PC²``, or ``≈ 1.5PC²`` from :func:`fers.tuning.gram_blocked_min_channels` bands on (the
    products fers runs: two diagonal blocks and one off-diagonal block); factorisation: Cholesky
    ``C³/3`` or symmetric eigendecomposition ``≈ 9C³`` (tridiagonalisation plus eigenvectors, Golub &
    Van Loan); scores: the triangular solve ``PC²`` plus the squared norms ``2PC`` (Cholesky) or the
    projection ``2PC²`` plus ``3PC`` (eigen).
    """
    p, c = pixels, channels
    half = c // 2
    if c >= gram_blocked_min_channels():  # fers computes only three blocks of the symmetric product
        covariance = 2 * p * (half * half + (c - half) ** 2 + half * (c - half))
    else:
        covariance = 2 * p * c * c
    if solver == "cholesky":
        factorisation, scoring = c ** 3 / 3, p * c * c + 2 * p * c
    elif solver == "eigen":
        factorisation, scoring = 9 * c ** 3, 2 * p * c * c + 3 * p * c
    else:
        raise ValueError(f"solver must be 'cholesky' or 'eigen', got {solver!r}")
    parts = {"covariance": covariance + 2 * p * c, "factorisation": factorisation, "scoring": scoring}
    parts["total"] = sum(parts.values())
    return parts
