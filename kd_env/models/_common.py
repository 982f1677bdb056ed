"""Small building blocks shared by several families of the zoo."""

from __future__ import annotations

from torch import nn


def conv_bn(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """``Conv(bias=False) -> BN [-> ReLU]`` with 'same' padding for odd kernels.

    The conv has no bias because the following BatchNorm's shift makes it redundant.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def kaiming_init(module: nn.Module, linear_std: float | None = None) -> None:
    """He-normal (fan_out) convs, BN to identity, zero biases; the usual CIFAR-zoo init.

    Args:
        module: the network to initialise in place.
        linear_std: if given, ``nn.Linear`` weights are drawn from ``N(0, linear_std)`` (the
            RepDistiller VGG/MobileNetV2 recipe); otherwise PyTorch's default is kept.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
