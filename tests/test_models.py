"""receiptlib.models: weight sources (never downloading), transfer of a different fc, penultimate features."""
import warnings

import pytest
import torch
from torch import nn

from receiptlib import models


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache, so the machine's real cache never matters."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _fake_imagenet_file(hub_dir):
    from torchvision.models import resnet18

    path = hub_dir / "checkpoints" / models.IMAGENET_FILE
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    state = resnet18(num_classes=1000).state_dict()
    torch.save(state, path)
    return path, state


def test_none_is_random_init_with_num_classes():
    m = models.resnet18(4, weights="none")
    assert m.weights_source == "none"
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_imagenet_missing_is_a_clear_error_and_never_downloads(hub_dir, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(FileNotFoundError, match=models.IMAGENET_FILE) as err:
        models.resnet18(3, weights="imagenet")
    assert str(hub_dir / "checkpoints") in str(err.value)


def test_imagenet_download_failure_is_a_clear_error(hub_dir, monkeypatch):
    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="network unreachable"):
        models.resnet18(3, weights="imagenet", allow_download=True)


def test_auto_without_local_weights_trains_from_scratch_with_a_notice(hub_dir):
    with pytest.warns(UserWarning, match="from scratch"):
        m = models.resnet18(3, weights="auto")
    assert m.weights_source == models.AUTO_SCRATCH


def test_imagenet_and_auto_load_the_local_file_and_replace_fc(hub_dir):
    path, state = _fake_imagenet_file(hub_dir)
    for weights in ("imagenet", "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no scratch notice when the file is there
            m = models.resnet18(25, weights=weights)
        assert m.weights_source == f"imagenet:{path}"
        assert torch.equal(m.conv1.weight, state["conv1.weight"])
        assert m.fc.out_features == 25


def test_path_weights_keep_fc_of_same_size_and_reinit_other(tmp_path):
    src = models.resnet18(5, weights="none")
    f = tmp_path / "w.pt"
    torch.save(src.state_dict(), f)
    same = models.resnet18(5, weights=f)
    assert same.weights_source == f"path:{f}"
    assert torch.equal(same.fc.weight, src.fc.weight)
    other = models.resnet18(3, weights=str(f))
    assert other.fc.out_features == 3
    assert torch.equal(other.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    # a receiptlib checkpoint (a dict with "model") and a DDP-prefixed state dict work too
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "arch": "resnet18"}, f)
    assert torch.equal(models.resnet18(5, weights=f).fc.bias, src.fc.bias)


def test_other_architecture_or_garbage_is_a_clear_error(tmp_path):
    from torchvision.models import resnet34

    f = tmp_path / "r34.pt"
    torch.save(resnet34(num_classes=5).state_dict(), f)
    with pytest.raises(ValueError, match="not a resnet18"):
        models.resnet18(5, weights=f)
    torch.save({"model": {}, "arch": "stn_resnet18"}, f)
    with pytest.raises(ValueError, match="architecture 'stn_resnet18'"):
        models.resnet18(5, weights=f)
    (tmp_path / "junk.pt").write_text("not torch")
    with pytest.raises(ValueError, match="junk.pt"):
        models.resnet18(5, weights=tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        models.resnet18(5, weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="num_classes"):
        models.resnet18(0, weights="none")


def test_features_and_logits_is_the_fc_input_and_output():
    torch.manual_seed(0)
    m = models.resnet18(3, weights="none").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, logits = models.features_and_logits(m, x)
        assert feats.shape == (2, models.FEATURE_DIM) and logits.shape == (2, 3)
        torch.testing.assert_close(logits, m(x))
        torch.testing.assert_close(m.fc(feats), logits)
    assert not m.fc._forward_hooks  # the hook is removed


def test_features_and_logits_on_a_wrapper_exposing_classifier():
    class Wrapper(nn.Module):  # the contract a spatial transformer wrapper follows
        def __init__(self):
            super().__init__()
            self.pre = nn.Conv2d(3, 3, 1)
            self.classifier = models.resnet18(2, weights="none")

        def forward(self, x):
            return self.classifier(self.pre(x))

    w = Wrapper().eval()
    assert models.classifier_head(w) is w.classifier.fc
    with torch.no_grad():
        feats, logits = models.features_and_logits(w, torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 512) and logits.shape == (1, 2)


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0: ImageNet weights from the package index, through an explicit key map
# ----------------------------------------------------------------------------------------------

def test_registry_maps_names_to_constructors_weights_and_preprocessing():
    assert set(models.ARCHITECTURES) >= {"resnet18", "efficientnet_lite0"}
    lite = models.get_architecture("efficientnet_lite0")
    assert (lite.mean, lite.std, lite.feature_dim) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1280)
    assert models.get_architecture("resnet18").mean == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match="architecture 'vgg' is not registered; registered: "):
        models.build("vgg", 3)


def test_lite0_key_map_covers_the_file_with_matching_shapes():
    state, _ = models.lite0_imagenet_state_dict()
    model = models.efficientnet_lite0(1000, weights="none")
    own = model.state_dict()
    assert len(state) == len(own) == 296 and set(state) == set(own)
    assert all(state[k].shape == own[k].shape for k in own)
    assert models.lite0_key("_blocks.3._depthwise_conv.weight") == "blocks.2.0.conv_dw.weight"  # stage 2's first
    with pytest.raises(KeyError, match="not a key"):
        models.lite0_key("_head.weight")


@pytest.mark.parametrize("photo, classes", [("chelsea", range(281, 286)), ("coffee", [967])])
def test_lite0_imagenet_weights_classify_real_photos(photo, classes):
    """A wrong key map, normalisation or padding turns these into other classes: the conversion is right."""
    import skimage.data
    from PIL import Image

    from receiptlib import data

    model = models.build("efficientnet_lite0", 1000, weights="imagenet").eval()
    assert model.weights_source.startswith("imagenet:")
    arch = models.get_architecture("efficientnet_lite0")
    x = data.eval_transform(image_size=224, mean=arch.mean, std=arch.std)(Image.fromarray(getattr(skimage.data, photo)()))
    with torch.no_grad():
        top1 = int(model(x[None]).argmax(1))
    assert top1 in classes


def test_lite0_auto_fine_tunes_a_new_head_and_records_the_source():
    m = models.build("efficientnet_lite0", 7, weights="auto")
    assert m.weights_source.startswith("imagenet:") and m.classifier.out_features == 7
    feats, logits = models.features_and_logits(m.eval(), torch.zeros(2, 3, 64, 64))
    assert feats.shape == (2, models.LITE0_FEATURE_DIM) and logits.shape == (2, 7)
