import math

import pytest
import torch
from torch import nn

from receiptlib import residual

# one torch thread: the suite shares the cores with notebook kernels and subprocesses (conftest's one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_both_nets_have_batchnorm_after_every_convolution_and_he_init():
    for shortcut in (False, True):
        torch.manual_seed(0)
        net = residual.DeepCNN(5, blocks=3, width=32, residual=shortcut)
        convs = [m for _, m in net.conv_layers()]
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(convs) == len(norms) == 2 * 3 + 1
        assert all(c.bias is None for c in convs)  # BN follows: no conv bias
        for conv in convs[1:]:
            # kaiming_normal_(fan_out, relu): std sqrt(2 / (out_channels * 9)); PyTorch's default is ~3x smaller
            expected = math.sqrt(2.0 / (conv.out_channels * 9))
            assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)


def test_bare_variant_has_no_batchnorm_and_default_init():
    torch.manual_seed(0)
    net = residual.DeepCNN(5, blocks=3, width=32, residual=False, batchnorm=False, init="default")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    conv = net.conv_layers()[1][1]
    assert conv.bias is not None
    assert conv.weight.std().item() < 0.5 * math.sqrt(2.0 / (conv.out_channels * 9))
    with pytest.raises(ValueError):
        residual.DeepCNN(5, blocks=3, residual=False, init="xavier")


def test_shortcut_is_the_only_difference():
    torch.manual_seed(0)
    plain = residual.DeepCNN(5, blocks=4, width=8, residual=False)
    torch.manual_seed(0)
    res = residual.DeepCNN(5, blocks=4, width=8, residual=True)
    assert residual.parameter_count(plain) == residual.parameter_count(res)
    assert len(plain.conv_layers()) == 2 * 4 + 1
    # same seed, same initial weights: only the forward pass differs
    for (name, p), (name_r, q) in zip(plain.named_parameters(), res.named_parameters()):
        assert name == name_r and torch.equal(p, q)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(plain(x), res(x))
    # with every block's output zeroed (last BN's weight and bias 0) the residual block is the identity
    for block in res.blocks:
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    res.eval()
    stem = torch.relu(res.stem_bn(res.stem(x)))
    stem = torch.nn.functional.max_pool2d(stem, 3, stride=2, padding=1)
    assert torch.allclose(res.blocks(stem), stem)


def test_gradients_vanish_in_the_bare_plain_net_only():
    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 5, (32,))
    grads = residual.gradient_norms(images, labels, 5, blocks=12, width=8)
    assert set(grads.variant) == set(residual.VARIANTS) and len(grads) == 2 * 2 * (2 * 12 + 1)
    bare = "bare (no BN, default init)"
    # Through 24 bare conv layers with default init the first layer's gradient is orders of magnitude below the
    # last's; with shortcuts, or with BN and He init, it is not
    assert residual.first_to_last_ratio(grads, "plain", bare) < 1e-4
    assert residual.first_to_last_ratio(grads, "residual", bare) > 1e-2
    for net in residual.NETS:
        assert residual.first_to_last_ratio(grads, net, "BN + He init") > 1e-2
    with pytest.raises(ValueError):
        residual.first_to_last_ratio(grads, "plain")  # two variants: which one must be said


def separable_task(n=128, classes=4, size=16, seed=0):
    """Each class a different colour: separable from the channel means alone."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    colours = torch.randn(classes, 3, generator=g) * 2
    images = colours[labels][:, :, None, None] + 0.3 * torch.randn(n, 3, size, size, generator=g)
    return images, labels


def test_training_on_a_separable_task_lowers_the_loss_below_chance():
    images, labels = separable_task()
    torch.manual_seed(0)
    net = residual.DeepCNN(4, blocks=2, width=8, residual=True)
    losses = residual.train_net(net, images, labels, steps=30, lr=0.05, batch_size=32)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * math.log(4) < losses[0]
    loss, accuracy = residual.evaluate(net, images, labels)
    assert accuracy > 0.9 and loss < 0.5 * math.log(4)


def test_depth_study_is_deterministic_and_summarises_every_net_and_depth():
    images, labels = separable_task(n=64, size=8)
    kwargs = dict(depths=(1, 2), width=4, steps=4, lr=0.05, batch_size=16, seed=3)
    history, summary = residual.depth_study(images, labels, images[:32], labels[:32], 4, **kwargs)
    again, summary_again = residual.depth_study(images, labels, images[:32], labels[:32], 4, **kwargs)
    assert history.equals(again) and summary.equals(summary_again)
    assert len(history) == 2 * 2 * 4 and {(r.net, r.blocks) for r in summary.itertuples()} == {
        (n, d) for n in residual.NETS for d in (1, 2)}
    # plain and residual at one depth: same size, different training
    at3 = summary[summary.blocks == 2].set_index("net")
    assert at3.parameters["plain"] == at3.parameters["residual"]
    assert at3.train_loss["plain"] != at3.train_loss["residual"]
    other, _ = residual.depth_study(images, labels, images[:32], labels[:32], 4, **dict(kwargs, seed=4))
    assert not history.loss.equals(other.loss)
    assert all(0 <= a <= 1 for a in summary.val_accuracy)
    text = residual.depth_conclusion(summary, math.log(4))
    assert "plain" in text and "residual" in text and f"{summary.train_loss.iloc[0]:.3f}" in text


def test_conclusion_follows_the_numbers():
    import pandas as pd

    def table(plain, res):
        return pd.DataFrame([{"net": net, "blocks": d, "train_loss": v, "train_loss_std": 0.01, "val_accuracy": 0.5}
                             for net, values in (("plain", plain), ("residual", res)) for d, v in zip((4, 16), values)])

    degraded = residual.depth_conclusion(table((1.0, 2.0), (1.0, 0.9)), math.log(25))
    assert "reproduced" in degraded and "rises with depth" in degraded
    flat = residual.depth_conclusion(table((1.0, 1.0), (1.0, 0.9)), math.log(25))
    assert "no degradation is shown" in flat
    stuck = residual.depth_conclusion(table((3.3, 3.3), (3.3, 3.3)), math.log(25))
    assert "Still at chance" in stuck
    assert residual.degradation(table((1.0, 2.0), (1.0, 0.9))) == pytest.approx(
        {"plain": 1.0, "residual": -0.1, "plain_minus_residual_at_deepest": 1.1})
