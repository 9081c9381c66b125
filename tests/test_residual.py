import torch

from receiptlib import residual


def test_shortcut_is_the_only_difference():
    plain = residual.DeepCNN(5, blocks=4, width=8, residual=False)
    res = residual.DeepCNN(5, blocks=4, width=8, residual=True)
    assert [p.shape for p in plain.parameters()] == [p.shape for p in res.parameters()]
    assert len(plain.conv_layers()) == 2 * 4 + 1


def test_gradients_vanish_in_the_plain_net_only():
    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 5, (32,))
    grads, losses = residual.gradient_study(images, labels, 5, blocks=12, width=8, steps=4, record_every=2, batch_size=16)
    assert set(grads.step) == {0, 2, 4} and len(losses) == 2 * 4
    plain = residual.first_to_last_ratio(grads, "plain")
    res = residual.first_to_last_ratio(grads, "residual")
    # Through 24 bare conv layers the first layer's gradient is orders of magnitude below the last's;
    # with identity shortcuts it stays within an order of magnitude or two.
    assert plain < 1e-4
    assert res > 1e-2
