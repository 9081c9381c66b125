"""Section IV's argument in numbers: gradients vanish through a deep plain CNN, not through its residual twin.

The paper motivates ResNet with a[l+2] = g(z[l+2] + a[l]): when a block's weights shrink, the block falls
back to the identity, so depth cannot hurt. Here two nets differ only in that shortcut. Both have no
normalisation layers on purpose: batch norm hides much of the effect, and the paper's argument is about
the bare composition of layers.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    """Two 3x3 convolutions; with `residual` the input is added before the last ReLU (a[l+2] = g(z[l+2] + a[l]))."""

    def __init__(self, width: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        z = self.conv2(F.relu(self.conv1(x)))
        return F.relu(z + x) if self.residual else F.relu(z)


class DeepCNN(nn.Module):
    """A stem, `blocks` two-convolution blocks at one width, global pooling and a linear classifier."""

    def __init__(self, num_classes: int, *, blocks: int = 16, width: int = 16, residual: bool):
        super().__init__()
        if blocks < 1 or width < 1:
            raise ValueError(f"blocks={blocks} and width={width} must be positive")
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[Block(width, residual) for _ in range(blocks)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        """Convolutions from input to output: depth index 0 is the stem."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]


def layer_grad_norms(model: DeepCNN, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """L2 norm of the cross-entropy gradient of each convolution's weight, input layer first."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    return [conv.weight.grad.norm().item() for _, conv in model.conv_layers()]


def gradient_study(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, blocks: int = 16, width: int = 16,
                   steps: int = 60, record_every: int = 20, lr: float = 0.01, batch_size: int = 32,
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train the plain and the residual net on the same batches; return (gradient norms, losses).

    Gradient norms: one row per (net, step, layer) at step 0 (initialisation) and every `record_every`
    steps; losses: one row per (net, step). Same seed, same initial weights in the shared layers, same
    batch order: the shortcut is the only difference.
    """
    grads, losses = [], []
    for residual in (False, True):
        net_name = "residual" if residual else "plain"
        torch.manual_seed(seed)
        model = DeepCNN(num_classes, blocks=blocks, width=width, residual=residual)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        order = torch.Generator().manual_seed(seed)
        for step in range(steps + 1):
            idx = torch.randint(len(images), (batch_size,), generator=order)
            x, y = images[idx], labels[idx]
            if step % record_every == 0:
                for depth, norm in enumerate(layer_grad_norms(model, x, y)):
                    grads.append({"net": net_name, "step": step, "layer": depth, "grad_norm": norm})
            if step == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append({"net": net_name, "step": step, "loss": loss.item()})
    return pd.DataFrame(grads), pd.DataFrame(losses)


def first_to_last_ratio(grads: pd.DataFrame, net: str, step: int = 0) -> float:
    """Gradient norm at the first convolution over that at the last: << 1 means gradients vanish on the way back."""
    rows = grads[(grads.net == net) & (grads.step == step)].sort_values("layer")
    return float(rows.grad_norm.iloc[0] / rows.grad_norm.iloc[-1])


def resnet_stages(model: nn.Module) -> pd.DataFrame:
    """ResNet18's structure as a table: stem, the four stages of residual blocks, the classifier."""
    rows = [{"part": "stem", "blocks": 0, "out_channels": model.conv1.out_channels,
             "parameters": sum(p.numel() for m in (model.conv1, model.bn1) for p in m.parameters())}]
    for i in range(1, 5):
        stage = getattr(model, f"layer{i}")
        rows.append({"part": f"layer{i}", "blocks": len(stage), "out_channels": stage[-1].conv2.out_channels,
                     "parameters": sum(p.numel() for p in stage.parameters())})
    rows.append({"part": "fc", "blocks": 0, "out_channels": model.fc.out_features,
                 "parameters": sum(p.numel() for p in model.fc.parameters())})
    return pd.DataFrame(rows)
