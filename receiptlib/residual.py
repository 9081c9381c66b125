"""Section IV's argument in numbers: the degradation problem, and what identity shortcuts do about it.

The paper motivates ResNet with a[l+2] = g(z[l+2] + a[l]): when a block's weights shrink, the block falls
back to the identity, so extra depth cannot hurt. He et al. (2016) observed that deeper *plain* nets reach a
*higher training loss* than shallower ones even with He initialisation and batch normalisation, which keep
gradients from vanishing; they call it the degradation problem, an optimisation difficulty, not overfitting
and not vanishing gradients. Here two nets differ only in that shortcut: the same stem, the same BasicBlocks
(conv-BN-ReLU-conv-BN, + shortcut, ReLU), He (fan_out) init, the same initial weights and the same batches.

    history, summary = depth_study(images, labels, val_images, val_labels, 25, depths=(8, 16, 32))

`depth_study` trains both nets at several depths and measures training loss (and accuracy on the training
photos and on held-out ones) against depth. `gradient_norms` measures per-layer gradients at initialisation,
for the BN+He nets and, as a contrast, for the bare variant (no BatchNorm, PyTorch's default init) in which
gradients do vanish through the plain net: that is a different effect from the degradation, fixed by BN and
He init alone.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn
import torch.nn.functional as F

from . import data

NETS = ("plain", "residual")


def _norm(width: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(width) if batchnorm else nn.Identity()


class Block(nn.Module):
    """ResNet's BasicBlock at one width: conv-BN-ReLU-conv-BN, then with `residual` the input is added before
    the last ReLU (a[l+2] = g(z[l+2] + a[l])). `batchnorm=False`: the bare block (convolutions with biases)."""

    def __init__(self, width: int, residual: bool, *, batchnorm: bool = True):
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=not batchnorm)
        self.bn1 = _norm(width, batchnorm)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=not batchnorm)
        self.bn2 = _norm(width, batchnorm)

    def forward(self, x):
        z = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(z + x) if self.residual else F.relu(z)


class DeepCNN(nn.Module):
    """A stem (3x3 stride-2 conv-BN-ReLU, 3x3 stride-2 max pool: a quarter of the input's side), `blocks` BasicBlocks at one width, global pooling and a linear classifier.

    `init="he"`: every convolution kaiming_normal_ (fan_out, relu), BN weight 1 and bias 0, as torchvision's
    ResNet; `init="default"`: PyTorch's default layer init. `batchnorm=False, init="default"` is the bare
    variant, kept only as the vanishing-gradient contrast. The plain and the residual net built with the same
    arguments after the same `torch.manual_seed` have identical parameters: the shortcut is the only difference.
    """

    def __init__(self, num_classes: int, *, blocks: int = 16, width: int = 16, residual: bool,
                 batchnorm: bool = True, init: str = "he"):
        super().__init__()
        if blocks < 1 or width < 1:
            raise ValueError(f"blocks={blocks} and width={width} must be positive")
        if init not in ("he", "default"):
            raise ValueError(f"init={init!r}: expected 'he' or 'default'")
        self.residual, self.batchnorm, self.init = residual, batchnorm, init
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=not batchnorm)
        self.stem_bn = _norm(width, batchnorm)
        self.blocks = nn.Sequential(*[Block(width, residual, batchnorm=batchnorm) for _ in range(blocks)])
        self.fc = nn.Linear(width, num_classes)
        if init == "he":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem_bn(self.stem(x))), 3, stride=2, padding=1)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        """Convolutions from input to output: depth index 0 is the stem."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]


def parameter_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def layer_grad_norms(model: DeepCNN, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """L2 norm of the cross-entropy gradient of each convolution's weight, input layer first (train mode)."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    return [conv.weight.grad.norm().item() for _, conv in model.conv_layers()]


VARIANTS = {"BN + He init": dict(batchnorm=True, init="he"),
            "bare (no BN, default init)": dict(batchnorm=False, init="default")}


def gradient_norms(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, blocks: int = 16,
                   width: int = 16, seed: int = 0, variants: dict | None = None) -> pd.DataFrame:
    """Per-layer gradient norms at initialisation, one row per (variant, net, layer), on one batch.

    `variants` (default VARIANTS): name -> DeepCNN keyword arguments; the BN + He nets are the ones
    `depth_study` trains, the bare ones the vanishing-gradient contrast."""
    rows = []
    for variant, kwargs in (variants or VARIANTS).items():
        for net in NETS:
            torch.manual_seed(seed)
            model = DeepCNN(num_classes, blocks=blocks, width=width, residual=net == "residual", **kwargs)
            for layer, norm in enumerate(layer_grad_norms(model, images, labels)):
                rows.append({"variant": variant, "net": net, "layer": layer, "grad_norm": norm})
    return pd.DataFrame(rows)


def first_to_last_ratio(grads: pd.DataFrame, net: str, variant: str | None = None) -> float:
    """Gradient norm at the first convolution over that at the last: << 1 means gradients vanish on the way
    back. `variant`: one of grads.variant (needed when it holds several)."""
    rows = grads[grads.net == net]
    if "variant" in rows:
        names = sorted(set(rows.variant))
        if variant is None and len(names) > 1:
            raise ValueError(f"grads holds variants {names}: name one")
        rows = rows[rows.variant == (variant if variant is not None else names[0])]
    rows = rows.sort_values("layer")
    return float(rows.grad_norm.iloc[0] / rows.grad_norm.iloc[-1])


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` in eval mode (BN's running statistics) on the given photos."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    model.train()
    return loss / len(images), correct / len(images)


def train_net(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float,
              batch_size: int, seed: int = 0, momentum: float = 0.9, weight_decay: float = 1e-4) -> list[float]:
    """SGD with momentum and a cosine learning rate from `lr` to 0 over `steps` minibatches drawn (with a
    generator seeded by `seed`, so every net sees the same batches) from `images`; returns each step's loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randperm(len(images), generator=order)[:batch_size]
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def depth_study(images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor, val_labels: torch.Tensor,
                num_classes: int, *, depths=(8, 16, 32), width: int = 16, steps: int = 300, lr: float = 0.05,
                batch_size: int = 64, seed: int = 0, final_fraction: float = 0.1,
                eval_photos: int = 512) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train the plain and the residual net (BN + He init) at each depth on the same batches; return
    (history, summary).

    history: one row per (net, blocks, step) with the minibatch loss. summary: one row per (net, blocks) with
    `train_loss`, the mean minibatch loss of the last `final_fraction` of the steps (what the optimiser
    reached), `train_loss_std` (their spread), eval-mode loss and accuracy on the first `eval_photos` training
    photos (`train_eval_loss`, `train_accuracy`) and on the held-out photos (`val_loss`, `val_accuracy`).
    At each depth both nets start from the same weights (torch.manual_seed(seed) before each)."""
    history, summary = [], []
    tail = min(steps, max(2, round(steps * final_fraction)))
    for blocks in depths:
        for net in NETS:
            torch.manual_seed(seed)
            model = DeepCNN(num_classes, blocks=int(blocks), width=width, residual=net == "residual")
            losses = train_net(model, images, labels, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
            history += [{"net": net, "blocks": int(blocks), "step": s, "loss": v} for s, v in enumerate(losses)]
            last = torch.tensor(losses[-tail:])
            train_eval_loss, train_acc = evaluate(model, images[:eval_photos], labels[:eval_photos])
            val_loss, val_acc = evaluate(model, val_images, val_labels)
            summary.append({"net": net, "blocks": int(blocks), "convolutions": 2 * int(blocks) + 1,
                            "parameters": parameter_count(model), "train_loss": float(last.mean()),
                            "train_loss_std": float(last.std()) if len(last) > 1 else 0.0,
                            "train_eval_loss": train_eval_loss, "train_accuracy": train_acc,
                            "val_loss": val_loss, "val_accuracy": val_acc})
    return pd.DataFrame(history), pd.DataFrame(summary)


def degradation(summary: pd.DataFrame, metric: str = "train_loss") -> dict:
    """Per net, `metric` at the deepest minus at the shallowest depth (> 0: deeper trains worse), and the
    plain net's minus the residual's at the deepest depth."""
    out = {}
    for net in NETS:
        rows = summary[summary.net == net].sort_values("blocks")
        out[net] = float(rows[metric].iloc[-1] - rows[metric].iloc[0])
    deepest = summary[summary.blocks == summary.blocks.max()].set_index("net")[metric]
    out["plain_minus_residual_at_deepest"] = float(deepest["plain"] - deepest["residual"])
    return out


def depth_conclusion(summary: pd.DataFrame, chance_loss: float) -> str:
    """The depth study's conclusion in words, written from `summary` (depth_study's): what each net's training
    loss did with depth, whether the plain net degraded and the residual net did not, and whether any net
    stayed at chance (`chance_loss`, ln of the number of classes)."""
    depths = sorted(set(summary.blocks))
    by = summary.set_index(["net", "blocks"])
    # "clearly" different: by more than twice the larger spread of the last steps' minibatch losses
    noise = 2 * float(summary.train_loss_std.max())
    lines = []
    for net in NETS:
        values = ", ".join(f"{by.loc[(net, d), 'train_loss']:.3f} at {d}" for d in depths)
        change = by.loc[(net, depths[-1]), "train_loss"] - by.loc[(net, depths[0]), "train_loss"]
        trend = ("rises with depth" if change > noise else "falls with depth" if change < -noise
                 else "changes by less than the minibatch spread")
        accs = ", ".join(f"{by.loc[(net, d), 'val_accuracy']:.2f}" for d in depths)
        lines.append(f"{net}: final training loss {values} blocks ({trend}, {change:+.3f} from {depths[0]} to "
                     f"{depths[-1]} blocks); held-out accuracy {accs}.")
    gap = by.loc[("plain", depths[-1]), "train_loss"] - by.loc[("residual", depths[-1]), "train_loss"]
    plain_change = by.loc[("plain", depths[-1]), "train_loss"] - by.loc[("plain", depths[0]), "train_loss"]
    res_change = by.loc[("residual", depths[-1]), "train_loss"] - by.loc[("residual", depths[0]), "train_loss"]
    if plain_change > noise and res_change <= noise:
        verdict = ("The degradation of the paper's argument is reproduced: the deeper plain net trains worse, "
                   "the deeper residual net does not.")
    elif plain_change > noise:
        verdict = "Both nets train worse with depth here; the shortcut does not remove the degradation in this run."
    else:
        verdict = "The plain net does not train clearly worse with depth in this run: no degradation is shown."
    learned = [f"{net} at {d}" for net in NETS for d in depths if by.loc[(net, d), "train_loss"] > chance_loss - noise]
    chance = (f" Still at chance (ln {chance_loss:.2f}): {', '.join(learned)}." if learned
              else f" Every net ended below chance (ln = {chance_loss:.3f}).")
    return (" ".join(lines) + f" At {depths[-1]} blocks the plain net's loss is {gap:+.3f} against the residual "
            f"net's (minibatch spread ±{noise / 2:.3f}, one seed). " + verdict + chance)


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


def load_photos(root, split: str, *, image_size: int, limit: int | None = None, seed: int = 0):
    """(images, labels, known classes) of up to `limit` photos of known chains from `split` (Other left out), in
    a seeded random order, decoded once at `image_size` px with the evaluation transform: the depth study's
    fixed pool of training photos, or its held-out photos."""
    ds = data.ReceiptFolder(root, split, transform=data.eval_transform(image_size=image_size), on_error="skip")
    xs, ys, n = [], [], 0
    for x, y in data.make_loader(ds, batch_size=256, shuffle=True, seed=seed, on_error="skip"):
        keep = y < ds.other_label
        xs.append(x[keep])
        ys.append(y[keep])
        n += int(keep.sum())
        if limit is not None and n >= limit:
            break
    images, labels = torch.cat(xs), torch.cat(ys)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, ds.known_classes
