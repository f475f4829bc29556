"""Named network architectures, so that a model card or a CLI flag can say which network it means.

The MNIST and Fashion-MNIST pairs follow the paper (Appendix A.1-A.2): fully connected ReLU networks on the
flat 784-pixel input, each dataset with its own widths. The first layer is an ``nn.Linear`` on that flat input
(no ``nn.Flatten`` in front), so the network form's first affine layer is the input's own.

The CIFAR-10 pair is the paper's Table 3: three 3x3 convolutions (stride 2, a 2x2 max-pool, stride 2 with
padding 1, stride 1) down to 32 x 2 x 2 = 128 features, then two hidden linear layers (teacher 128-64, student
64-32). Our copy of the table does not show every ReLU; one follows every convolution and every hidden linear
layer, as in the paper's other networks. Max-pools use stride == kernel, the case that CROWN and the exact MILP
encoding both support.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class MLPSpec:
    """``input_dim -> hidden[0] -> ... -> hidden[-1] -> num_classes`` with ReLU after every hidden layer."""

    input_dim: int
    hidden: tuple[int, ...]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape (without the batch axis)."""
        return (self.input_dim,)

    def describe(self) -> str:
        widths = "-".join(str(w) for w in (self.input_dim, *self.hidden, self.num_classes))
        return f"MLP {widths} (ReLU), input [N, {self.input_dim}], output logits [N, {self.num_classes}]"


@dataclass(frozen=True)
class Conv:
    """``nn.Conv2d(in, out_channels, kernel, stride, padding)`` followed by a ReLU."""

    out_channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    pool: int = 0  # a max-pool of this size and stride after the ReLU (0: none)

    def out_side(self, side: int) -> int:
        side = (side + 2 * self.padding - self.kernel) // self.stride + 1
        return side // self.pool if self.pool else side


@dataclass(frozen=True)
class CNNSpec:
    """``[Conv -> ReLU (-> MaxPool)] per conv -> Flatten -> [Linear -> ReLU] per hidden width -> Linear``."""

    input_shape: tuple[int, int, int]  # (channels, height, width)
    convs: tuple[Conv, ...]
    hidden: tuple[int, ...]
    num_classes: int

    @property
    def flat_features(self) -> int:
        side_h, side_w = self.input_shape[1], self.input_shape[2]
        for conv in self.convs:
            side_h, side_w = conv.out_side(side_h), conv.out_side(side_w)
        return self.convs[-1].out_channels * side_h * side_w

    def describe(self) -> str:
        def one(c: Conv) -> str:
            pad = f", pad {c.padding}" if c.padding else ""
            pool = f" maxpool{c.pool}" if c.pool else ""
            return f"conv{c.kernel}x{c.kernel}({c.out_channels}, stride {c.stride}{pad}) relu{pool}"

        convs = " - ".join(one(c) for c in self.convs)
        fcs = "".join(f" - linear({h}) relu" for h in self.hidden)
        shape = ", ".join(str(d) for d in self.input_shape)
        return f"CNN {convs} - flatten{fcs} - linear({self.num_classes}), input [N, {shape}], output logits"


Spec = MLPSpec | CNNSpec

ARCHITECTURES: dict[str, Spec] = {
    # Appendix A.1: MNIST teacher 784-[30]x6-10, student 784-[20]x4-10.
    "mnist-teacher": MLPSpec(input_dim=784, hidden=(30,) * 6, num_classes=10),
    "mnist-student": MLPSpec(input_dim=784, hidden=(20,) * 4, num_classes=10),
    # Appendix A.2: Fashion-MNIST teacher 784-64-32-32-32-32-16-10, student 784-30-30-30-30-10.
    "fashion-mnist-teacher": MLPSpec(input_dim=784, hidden=(64, 32, 32, 32, 32, 16), num_classes=10),
    "fashion-mnist-student": MLPSpec(input_dim=784, hidden=(30,) * 4, num_classes=10),
    # Table 3: 3x32x32 -> conv 3x3 s2 (15x15) -> maxpool 2 (7x7) -> conv 3x3 s2 pad 1 (4x4) -> conv 3x3 (2x2):
    # 32 x 2 x 2 = 128 features, which is what the table's first FC layer takes.
    "cifar10-teacher": CNNSpec(
        input_shape=(3, 32, 32),
        convs=(Conv(8, stride=2, pool=2), Conv(16, stride=2, padding=1), Conv(32)),
        hidden=(128, 64),
        num_classes=10,
    ),
    "cifar10-student": CNNSpec(
        input_shape=(3, 32, 32),
        convs=(Conv(6, stride=2, pool=2), Conv(16, stride=2, padding=1), Conv(32)),
        hidden=(64, 32),
        num_classes=10,
    ),
}


def get_spec(name: str) -> Spec:
    """The spec registered under ``name``; ValueError listing the known names otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def build_mlp(spec: MLPSpec) -> nn.Sequential:
    """``nn.Sequential(Linear, ReLU, ..., Linear)`` outputting logits, He-initialised.

    Weights ``W ~ N(0, 2 / fan_in)``, biases 0 (He et al. 2015), which keeps the activation variance constant
    through ReLU layers. PyTorch's default (``U(+-1/sqrt(fan_in))``, variance ``1 / (3 fan_in)``) shrinks that
    variance about 6x per layer, so the deep, narrow teacher starts out nearly constant and SGD stalls
    (measured: stuck at 11% accuracy).
    """
    layers: list[nn.Module] = []
    width = spec.input_dim
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, spec.num_classes))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def build_cnn(spec: CNNSpec) -> nn.Sequential:
    """The CNN of ``spec``, He-initialised like :func:`build_mlp` (conv and linear weights, zero biases)."""
    layers: list[nn.Module] = []
    channels = spec.input_shape[0]
    for conv in spec.convs:
        layers += [
            nn.Conv2d(channels, conv.out_channels, conv.kernel, stride=conv.stride, padding=conv.padding),
            nn.ReLU(),
        ]
        if conv.pool:
            layers.append(nn.MaxPool2d(conv.pool))
        channels = conv.out_channels
    layers.append(nn.Flatten())
    width = spec.flat_features
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, spec.num_classes))
    for layer in layers:
        if isinstance(layer, nn.Linear | nn.Conv2d) and layer.bias is not None:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class InputNormalisation(nn.Module):
    """``(x - mean) / std`` in front of a network trained on normalised inputs (no parameters)."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"the normalisation's std must be positive, got {std}")
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean:g}, std={self.std:g}"


def with_normalisation(network: nn.Sequential, normalisation: tuple[float, float] | None) -> nn.Sequential:
    """``network`` behind an :class:`InputNormalisation` (``network`` itself when ``normalisation`` is None)."""
    if normalisation is None:
        return network
    return nn.Sequential(InputNormalisation(*normalisation), *network)


def fold_normalisation(model: nn.Sequential) -> nn.Sequential:
    """The same function without its leading :class:`InputNormalisation`: folded into the first layer, an
    ``nn.Linear`` (``W (x - m) / s + b = (W / s) x + (b - W 1 m / s)``) or an unpadded ``nn.Conv2d`` (the same per
    output channel, the sum over the kernel and input channels; with padding the padded zeros would stand for
    pixel ``m`` before folding and 0 after), so the exported graph is the plain network on pixels. Computed in
    float64 and rounded once to the layer's dtype. A model without a normalisation is returned as is.
    """
    norm, first, *rest = model
    if not isinstance(norm, InputNormalisation):
        return model
    if isinstance(first, nn.Conv2d) and first.padding not in ((0, 0), 0, "valid"):
        raise ValueError("a normalisation folds into a Conv2d only without padding")
    if not isinstance(first, nn.Linear | nn.Conv2d):
        raise ValueError(f"a normalisation folds into a Linear or Conv2d layer, not {type(first).__name__}")
    folded = copy.deepcopy(first)
    with torch.no_grad():
        w = first.weight.double()
        out_channels = w.shape[0]
        b = first.bias.double() if first.bias is not None else torch.zeros(out_channels, dtype=torch.float64)
        folded.weight.copy_((w / norm.std).to(first.weight.dtype))
        shift = w.reshape(out_channels, -1).sum(dim=1) * (norm.mean / norm.std)
        if folded.bias is None:
            folded.bias = nn.Parameter(torch.zeros(out_channels, dtype=first.weight.dtype))
        folded.bias.copy_((b - shift).to(first.weight.dtype))
    return nn.Sequential(folded, *rest)


def build(name: str) -> nn.Sequential:
    """A freshly initialised network of the named architecture (seed torch first for reproducibility)."""
    spec = get_spec(name)
    return build_mlp(spec) if isinstance(spec, MLPSpec) else build_cnn(spec)
