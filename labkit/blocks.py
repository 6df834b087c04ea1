"""Convolutional blocks of the VGG-style networks studied in the lab.

Every block declares its layers from its arguments. Optional BatchNorm is an
``nn.Identity`` when switched off, so ``forward`` reads the same for every
variant and parameter names stay stable across variants.
"""

from __future__ import annotations

from torch import Tensor, nn

# PyTorch's default slope for leaky ReLU, which the course's networks use.
NEGATIVE_SLOPE = 0.01


def _norm(channels: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if bn else nn.Identity()


class EntryBlock(nn.Module):
    """3x3 convolution without bias, BatchNorm and leaky ReLU.

    The entry block has BatchNorm in every variant, the plain networks
    included, because the course's networks are built that way.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class ProcessingBlock(nn.Module):
    """Two 3x3 convolutions at constant width, each followed by leaky ReLU.

    Args:
        channels: input and output channels.
        bn: put BatchNorm2d after each convolution, before its activation.
        residual: add the block's input to the second convolution's output
            (after its BatchNorm) before the last activation, as in Figure 2
            of He et al., "Deep Residual Learning for Image Recognition" (2016).
    """

    def __init__(self, channels: int, bn: bool = False, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = _norm(channels, bn)
        self.act1 = nn.LeakyReLU(NEGATIVE_SLOPE)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = _norm(channels, bn)
        self.act2 = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.act1(self.bn1(self.conv1(x)))

        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + identity
        return self.act2(out)


class ReductionBlock(nn.Module):
    """Convolution, activation, 2x2 average pooling, convolution, activation.

    Both convolutions have a bias, as in the course's networks. There is no
    residual connection across the downsampling.
    """

    def __init__(self, in_channels: int, out_channels: int, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.bn1 = _norm(out_channels, bn)
        self.act1 = nn.LeakyReLU(NEGATIVE_SLOPE)
        self.pool = nn.AvgPool2d(kernel_size=2)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.bn2 = _norm(out_channels, bn)
        self.act2 = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))

        out = self.pool(out)

        return self.act2(self.bn2(self.conv2(out)))
