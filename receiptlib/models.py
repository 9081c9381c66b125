"""The architecture registry (name -> constructor, weights, preprocessing) and the penultimate-feature hook.

    arch = rl.models.get_architecture("resnet18")
    model = arch.build(25, weights="auto")       # or rl.models.build("resnet18", 25, weights="auto")
    arch.mean, arch.std, arch.feature_dim        # what every consumer (training, predict, ONNX) must use

Section IV/V of the paper: the smallest residual network, ResNet18, pretrained on ImageNet, last layer
replaced by one output per known chain, all layers fine-tuned. Without ImageNet weights on disk (nothing is
downloaded at run time) `weights="auto"` trains from scratch and says so (`model.weights_source`). A new
backbone is one `register(Architecture(...))` call at the bottom of this module.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .data import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

ARCH = "resnet18"
FEATURE_DIM = 512  # ResNet18's penultimate (global-average-pooled) width
IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1 file name
AUTO_SCRATCH = "none (auto: no local ImageNet weights)"


def imagenet_weights_path() -> Path:
    """Where torchvision keeps the ImageNet ResNet18 file: `torch.hub.get_dir()/checkpoints/<file>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def auto_weights() -> str:
    """What weights="auto" means on this machine: "imagenet" when torchvision's file is present, else "none"."""
    return "imagenet" if imagenet_weights_path().is_file() else "none"


def _imagenet_state_dict(allow_download: bool) -> tuple[dict, Path]:
    path = imagenet_weights_path()
    if not path.is_file():
        if not allow_download:
            raise FileNotFoundError(
                f"weights='imagenet' needs torchvision's ImageNet ResNet18 file {path}, which is missing. "
                f"Copy {IMAGENET_FILE} (from https://download.pytorch.org/models/{IMAGENET_FILE}) to "
                f"{path.parent}/, or pass allow_download=True where the network allows, or use "
                "weights='auto' (scratch when missing) or weights='none'.")
        from torchvision.models import ResNet18_Weights

        try:  # the only place receiptlib may touch the network, and only when asked to
            torch.hub.load_state_dict_from_url(ResNet18_Weights.IMAGENET1K_V1.url, progress=False)
        except Exception as exc:  # noqa: BLE001 - any network failure gets the same advice
            raise FileNotFoundError(
                f"downloading the ImageNet ResNet18 weights to {path} failed ({exc}); copy {IMAGENET_FILE} "
                f"there by hand or use weights='none'") from exc
    return torch.load(path, map_location="cpu", weights_only=True), path


def file_state_dict(path: Path) -> dict:
    """A state dict from a weights file, or the `model` entry of a receiptlib checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass 'auto', 'none', 'imagenet' or an existing file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot read weights file {path} with torch.load(weights_only=True): {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        if obj.get("arch", ARCH) != ARCH:
            raise ValueError(f"{path} is a checkpoint of architecture {obj.get('arch')!r}, not {ARCH!r}")
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of tensors)")
    # Checkpoints of a DistributedDataParallel or torch.compile'd model carry a prefix.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_backbone_state(model: nn.Module, state: dict, source: str) -> None:
    """Load `state` into a torchvision ResNet18; an fc of another size is dropped (re-initialised).

    Anything else that does not match (missing, unexpected or mis-shaped keys) means another
    architecture and raises with the offending keys.
    """
    own = model.state_dict()
    fc_keys = {"fc.weight", "fc.bias"}
    if any(k in state and state[k].shape != own[k].shape for k in fc_keys):
        log.info("%s: final layer has %s outputs, model needs %s; re-initialising fc",
                 source, tuple(state["fc.weight"].shape)[0], tuple(own["fc.weight"].shape)[0])
        state = {k: v for k, v in state.items() if k not in fc_keys}
    missing = sorted(set(own) - set(state) - fc_keys)
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{source} is not a {ARCH} state dict: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {misshaped[:5]} (of {len(missing)}, {len(unexpected)}, {len(misshaped)})")
    model.load_state_dict(state, strict=False)


def resnet18(num_classes: int, *, weights: str | os.PathLike = "auto", allow_download: bool = False) -> nn.Module:
    """torchvision ResNet18 with `num_classes` outputs.

    weights: "none" (random init), "imagenet" (torchvision's local ImageNet file; a clear error when
    missing unless `allow_download`), "auto" (ImageNet when the file is present, else scratch with a
    warning), or a path to a state dict / receiptlib checkpoint (an fc of another size is re-initialised,
    as in the paper's transfer learning). The choice is recorded as `model.weights_source`.
    """
    from torchvision.models import resnet18 as tv_resnet18

    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")
    key = str(weights)
    # From scratch, each residual block starts as the identity (its last BatchNorm scale 0): the argument
    # of section IV made literal, and a faster, steadier start (Goyal et al. 2017). Loaded weights overwrite it.
    model = tv_resnet18(weights=None, num_classes=num_classes, zero_init_residual=True)
    if key == "none":
        source = "none"
    elif key in ("imagenet", "auto"):
        if key == "auto" and auto_weights() == "none":
            source = AUTO_SCRATCH
            warnings.warn(f"weights='auto': no ImageNet weights at {imagenet_weights_path()}; training ResNet18 "
                          "from scratch (the paper fine-tunes ImageNet weights)", stacklevel=2)
        else:
            state, path = _imagenet_state_dict(allow_download)
            load_backbone_state(model, state, f"ImageNet weights {path}")
            source = f"imagenet:{path}"
    else:
        path = Path(weights).expanduser()
        if not path.exists() and key.lower() in {"scratch", "random", "pretrained", "imagenet1k"}:
            raise ValueError(f"weights={key!r}: expected 'auto', 'none', 'imagenet' or a path to a weights file")
        load_backbone_state(model, file_state_dict(path), f"weights file {path}")
        source = f"path:{path}"
    model.weights_source = source
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer whose input is the penultimate feature vector.

    Contract for wrappers (e.g. a spatial transformer in front of ResNet): expose the ResNet as
    `.classifier` (or be a ResNet with `.fc`), and have `forward` end with that layer.
    """
    model = unwrap(model)
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return model.fc
    inner = getattr(model, "classifier", None)
    if isinstance(inner, nn.Linear):
        return inner
    if isinstance(inner, nn.Module):
        return classifier_head(inner)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(model).__name__} has no final nn.Linear; expose the classifier as `.fc` or `.classifier`")
    return linears[-1]


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass returning (penultimate features [N, 512], logits [N, C]).

    The features are the input of the final linear layer (`classifier_head`), captured with a forward
    hook so any wrapper whose forward ends in that layer works unchanged (see section VI/IX: the logits
    feed the per-class max-logit thresholds, the features the distance-based proposal).
    """
    captured: list[torch.Tensor] = []
    handle = classifier_head(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the classifier head ran {len(captured)} times in one forward pass; expected once")
    return captured[0].flatten(1), logits


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """A backbone by name: how to build it with a weights setting, what "auto" resolves to on this machine,
    and the preprocessing its weights expect (inputs scaled to [0, 1], then (x - mean) / std per channel)."""

    name: str
    build: Callable[..., nn.Module]        # build(num_classes, *, weights="auto") -> nn.Module with .weights_source
    auto_weights: Callable[[], str]        # "imagenet" when its ImageNet weights are on disk, else "none"
    feature_dim: int                       # width of the penultimate features (input of the last linear layer)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


ARCHITECTURES: dict[str, Architecture] = {}
DEFAULT_ARCH = ARCH


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to the registry (a name may be registered once)."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: str, *, where: str = "") -> Architecture:
    """The registered architecture ``name``; an unknown name raises with the registered ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"{where + ': ' if where else ''}architecture {name!r} is not registered; "
                         f"registered: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build(name: str, num_classes: int, *, weights: str | os.PathLike = "auto") -> nn.Module:
    """``get_architecture(name).build(num_classes, weights=weights)``."""
    return get_architecture(name).build(num_classes, weights=weights)


register(Architecture(ARCH, build=resnet18, auto_weights=auto_weights, feature_dim=FEATURE_DIM))
