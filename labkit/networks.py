"""VGG-style networks of configurable depth, with optional BN and residual connections."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from labkit.blocks import EntryBlock, ProcessingBlock, ReductionBlock


class VGGNet(nn.Module):
    """Entry block, ``num_stages`` stages and a linear classifier.

    Each stage is ``num_blocks_per_stage`` processing blocks followed by one
    reduction block that halves the spatial size. Global average pooling
    feeds the classifier. Parameter names read
    ``features.stage2.block3.conv1.weight`` so that plots can label layers.
    """

    def __init__(
        self,
        num_blocks_per_stage: int = 5,
        num_stages: int = 3,
        num_filters: int = 32,
        num_classes: int = 100,
        in_channels: int = 3,
        bn: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        _check_whole("num_blocks_per_stage", num_blocks_per_stage, minimum=0)
        _check_whole("num_stages", num_stages, minimum=0)
        _check_whole("num_filters", num_filters, minimum=1)
        _check_whole("num_classes", num_classes, minimum=1)
        _check_whole("in_channels", in_channels, minimum=1)
        self.num_blocks_per_stage = num_blocks_per_stage
        self.num_stages = num_stages
        self.num_filters = num_filters
        self.num_classes = num_classes
        self.bn = bn
        self.residual = residual

        layers: list[tuple[str, nn.Module]] = [("entry", EntryBlock(in_channels, num_filters))]
        for stage in range(1, num_stages + 1):
            blocks = [
                (f"block{block}", ProcessingBlock(num_filters, bn=bn, residual=residual))
                for block in range(1, num_blocks_per_stage + 1)
            ]
            blocks.append(("reduce", ReductionBlock(num_filters, num_filters, bn=bn)))
            layers.append((f"stage{stage}", nn.Sequential(OrderedDict(blocks))))
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_filters, num_classes)

    @property
    def depth(self) -> int:
        """Number of weight layers: convolutions plus the classifier."""
        return network_depth(self.num_blocks_per_stage, self.num_stages)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(x)

        out = self.pool(out).flatten(1)

        return self.classifier(out)


def _check_whole(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def network_depth(num_blocks_per_stage: int, num_stages: int = 3) -> int:
    """Return the number of weight layers of a network: 8 for VGG_08, 38 for VGG_38."""
    # Entry conv + two convs per processing block + two per reduction block + classifier.
    return 1 + num_stages * (2 * num_blocks_per_stage + 2) + 1


def build_network(
    num_blocks_per_stage: int = 5,
    num_stages: int = 3,
    num_filters: int = 32,
    num_classes: int = 100,
    bn: bool = False,
    residual: bool = False,
) -> VGGNet:
    """Build a VGG-style network taking ``N x 3 x 32 x 32`` images and returning logits.

    The defaults give VGG_38; ``num_blocks_per_stage=0`` gives VGG_08.
    """
    return VGGNet(
        num_blocks_per_stage=num_blocks_per_stage,
        num_stages=num_stages,
        num_filters=num_filters,
        num_classes=num_classes,
        bn=bn,
        residual=residual,
    )


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_name(num_blocks_per_stage: int, num_stages: int = 3, bn: bool = False, residual: bool = False) -> str:
    """Name a network the way the course's results table does, e.g. ``VGG_38 BN+RC``."""
    name = f"VGG_{network_depth(num_blocks_per_stage, num_stages):02d}"
    suffix = "+".join(tag for tag, on in (("BN", bn), ("RC", residual)) if on)
    return f"{name} {suffix}" if suffix else name
