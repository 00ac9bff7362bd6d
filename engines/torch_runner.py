"""Reference backend: the PyTorch module itself, eager, on CPU."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engines.base import EngineBase


class TorchEngine(EngineBase):
    name = "torch"

    def __init__(
        self,
        module: nn.Module,
        input_names: list[str],
        threads: int | None = None,
        output_names: tuple[str, ...] = ("frame",),
    ):
        """``output_names`` name the module's outputs in order (one tensor or a tuple)."""
        self._module = module.eval()
        self._names = input_names
        self._outputs = output_names
        if threads:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self._names]
        out = self._module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {name: o.numpy() for name, o in zip(self._outputs, outs, strict=True)}
