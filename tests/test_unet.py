"""The U-Net: shapes for the shipped configs, class conditioning, the null class, bad sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, compose_config, raises_config_error
from hydra.utils import instantiate

from diffusion.core.errors import ConfigError
from diffusion.nets.unet import UNet

N_CLASSES = 5


def model_from_config(name: str, overrides=(), **kwargs) -> UNet:
    cfg = compose_config("train", [f"network={name}", *overrides])
    torch.manual_seed(0)
    return instantiate(cfg.network, **{"num_classes": N_CLASSES, "image_size": 16, **kwargs})


def perturb_output_layer(net: UNet) -> None:
    """The output convolution starts at zero (every input gives 0); give it weights so inputs show."""
    with torch.no_grad():
        net.out[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        net.out[-1].bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))


def inputs(batch: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g), torch.rand(batch, generator=g)


@pytest.mark.parametrize("name", ["small", "course", "large"])
def test_shipped_configs_keep_the_shape(name):
    net = model_from_config(name).eval()
    x, c_noise = inputs()
    with torch.no_grad():
        out = net(x, c_noise, torch.tensor([0, 1, 2, N_CLASSES]))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out)), "a fresh model must predict 0 (zero-initialised output)"
    perturb_output_layer(net)
    with torch.no_grad():
        out = net(x, c_noise, torch.tensor([0, 1, 2, 3]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_small_config_size():
    """conf/network/small.yaml promises ~2.9M parameters."""
    net = model_from_config("small")
    assert 2.5e6 < sum(p.numel() for p in net.parameters()) < 3.3e6


@pytest.mark.parametrize("size", [8, 16, 32])
def test_other_image_sizes(size):
    net = model_from_config("small", image_size=size)
    perturb_output_layer(net)
    x, c_noise = inputs(2, size)
    with torch.no_grad():
        assert net(x, c_noise, torch.tensor([0, 1])).shape == x.shape


def test_label_changes_the_output():
    net = model_from_config("small", TINY_MODEL).eval()
    perturb_output_layer(net)
    x, c_noise = inputs(2)
    x, c_noise = x[:1].expand(2, -1, -1, -1), c_noise[:1].expand(2)
    with torch.no_grad():
        out = net(x, c_noise, torch.tensor([0, 3]))
    assert not torch.allclose(out[0], out[1]), "the class label must change the output"
    # ... and the noise level too
    with torch.no_grad():
        out = net(x, torch.tensor([0.1, 0.9]), torch.tensor([2, 2]))
    assert not torch.allclose(out[0], out[1])


def test_null_class_index():
    net = model_from_config("small", TINY_MODEL).eval()
    perturb_output_layer(net)
    assert net.class_embed.num_embeddings == N_CLASSES + 1
    x, c_noise = inputs(3)
    with torch.no_grad():
        null = net(x, c_noise, torch.full((3,), N_CLASSES))
        none = net(x, c_noise, None)  # no labels: the null class
        cond = net(x, c_noise, torch.zeros(3, dtype=torch.long))
    assert torch.equal(null, none)
    assert not torch.allclose(null, cond)
    with pytest.raises(IndexError):
        net(x, c_noise, torch.full((3,), N_CLASSES + 1))


def test_unconditional_model():
    net = model_from_config("small", TINY_MODEL, num_classes=0).eval()
    assert net.class_embed is None
    x, c_noise = inputs(2)
    with torch.no_grad():
        assert net(x, c_noise).shape == x.shape


def test_gradients_reach_every_parameter():
    net = model_from_config("small", TINY_MODEL)
    perturb_output_layer(net)
    x, c_noise = inputs(2)
    net(x, c_noise, torch.tensor([1, N_CLASSES])).pow(2).mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None]
    assert not dead, dead


@pytest.mark.parametrize(
    "name, image_size, overrides",
    [
        ("small", 18, ()),  # 3 levels: factor 4
        ("small", 10, ()),
        ("course", 15, ()),  # 2 levels: factor 2
        ("small", 16, ("network.channel_mult=[1,2,2,2,2,2]",)),  # factor 32 > 16
    ],
)
def test_image_size_not_divisible_raises(name, image_size, overrides):
    message = raises_config_error(model_from_config, name, overrides, image_size=image_size)
    assert f"image size {image_size} is not divisible" in message and "channel_mult" in message


def test_norm_groups_not_dividing_channels_raises():
    with pytest.raises(ConfigError, match="norm_groups"):
        UNet(base_channels=12, channel_mult=(1, 2), norm_groups=8, attn_resolutions=())


def test_speed_options_keep_the_weights_and_the_output():
    """training.channels_last / training.compile: NHWC weights and a compiled forward, same names and values."""
    from diffusion.training.builders import apply_speed_options

    net = model_from_config("small", TINY_MODEL)
    perturb_output_layer(net)
    x, c_noise = inputs()
    labels = torch.arange(4) % N_CLASSES
    before, expected = dict(net.state_dict()), net(x, c_noise, labels)
    apply_speed_options(net, channels_last=True)
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    torch.testing.assert_close(net(x, c_noise, labels), expected, rtol=1e-5, atol=1e-5)
    apply_speed_options(net, compile=True)
    assert net._compiled_call_impl is not None  # Module.compile: the forward is compiled on the first call
    assert net.state_dict().keys() == before.keys()  # no "_orig_mod." prefix: checkpoints load either way
    with pytest.raises(ConfigError, match="training.compile='yes' must be true or false"):
        apply_speed_options(net, compile="yes")
