"""Gradient statistics recorded by hooks on any ``nn.Module``.

For every convolution and linear weight the recorder accumulates the mean
absolute gradient and the gradient L2 norm on the device, without syncing
the host, and turns them into tidy per-epoch rows when asked.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

TRACKED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Wrappers that prefix parameter names: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def layer_label(name: str) -> str:
    """Shorten a module name for plots: ``features.stage1.block2.conv1`` -> ``stage1.block2.conv1``."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in (*_WRAPPER_PREFIXES, "features."):
            if name.startswith(prefix):
                name = name[len(prefix):]
                stripped = True
    return name


def tracked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return (label, module) for every convolution and linear layer, in registration order."""
    return [(layer_label(name), module) for name, module in model.named_modules() if isinstance(module, TRACKED_LAYERS)]


class GradientRecorder:
    """Accumulate per-layer gradient statistics of a model's weights.

    Hooks run after each weight's gradient is accumulated, so the recorder
    works for any module, also one wrapped in DataParallel or torch.compile.
    Layers are ordered by their first forward call, which is forward order
    even when modules were registered in another order.

    Args:
        model: the module whose convolution and linear weights are tracked.
        every: record every ``every``-th backward pass (1 records all).
    """

    def __init__(self, model: nn.Module, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.layers = tracked_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no convolution or linear layer to record")
        self.labels = [label for label, _ in self.layers]
        self._first_call: dict[str, int] = {}
        self._calls = [0] * len(self.layers)
        self._sums: torch.Tensor | None = None  # (layers, 2): sum of mean |grad| and of L2 norm
        self._counts = [0] * len(self.layers)
        self.records: list[dict] = []
        self._handles = []
        for index, (label, module) in enumerate(self.layers):
            # Frozen weights never get a gradient, so they get no hook and no record.
            if module.weight.requires_grad:
                self._handles.append(module.weight.register_post_accumulate_grad_hook(self._make_grad_hook(index)))
            self._handles.append(module.register_forward_pre_hook(self._make_order_hook(label)))

    def _make_order_hook(self, label: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            self._first_call.setdefault(label, len(self._first_call))
        return hook

    def _make_grad_hook(self, index: int):
        def hook(param: torch.Tensor) -> None:
            self._calls[index] += 1
            if (self._calls[index] - 1) % self.every:
                return
            grad = param.grad.detach().float()
            if self._sums is None:
                self._sums = torch.zeros(len(self.layers), 2, device=grad.device)
            self._sums[index, 0] += grad.abs().mean()
            self._sums[index, 1] += grad.norm()
            self._counts[index] += 1
        return hook

    def forward_order(self) -> list[str]:
        """Layer labels in forward order (registration order for layers never called)."""
        seen = sorted(self._first_call, key=self._first_call.get)
        return seen + [label for label in self.labels if label not in self._first_call]

    def end_epoch(self, epoch: int) -> list[dict]:
        """Average what was accumulated since the last call into rows for ``epoch``.

        Layers whose weight got no gradient are skipped. This syncs the device once.
        """
        rows: list[dict] = []
        if self._sums is not None:
            sums = self._sums.cpu().tolist()
            index_of = {label: i for i, label in enumerate(self.labels)}
            for label in self.forward_order():
                i = index_of[label]
                if self._counts[i]:
                    rows.append({
                        "epoch": epoch,
                        "layer": label,
                        "mean_abs_grad": sums[i][0] / self._counts[i],
                        "grad_norm": sums[i][1] / self._counts[i],
                    })
        self.records.extend(rows)
        self._sums = None
        self._counts = [0] * len(self.layers)
        return rows

    def remove(self) -> None:
        """Detach every hook from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "GradientRecorder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


@contextlib.contextmanager
def preserve_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore a model's train/eval modes, parameters, buffers and gradients on exit.

    Probes run forward and backward passes that would otherwise move BatchNorm
    running statistics and overwrite ``.grad``. The model comes back
    bit-identical.
    """
    modes = {module: module.training for module in model.modules()}
    state = {key: value.detach().clone() for key, value in model.state_dict(keep_vars=True).items()}
    grads = {param: None if param.grad is None else param.grad.detach().clone() for param in model.parameters()}
    try:
        yield model
    finally:
        with torch.no_grad():
            for key, value in model.state_dict(keep_vars=True).items():
                value.copy_(state[key])
        for param, grad in grads.items():
            param.grad = grad
        for module, training in modes.items():
            module.train(training)


def gradients_at(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int = 0) -> list[dict]:
    """Measure per-layer gradient statistics of one batch without changing the model.

    The model runs in training mode, as in a training step, and is restored afterwards.
    """
    with preserve_state(model):
        model.train()
        model.zero_grad(set_to_none=True)
        with GradientRecorder(model) as recorder:
            loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            return recorder.end_epoch(epoch)
