"""Named network architectures, so that a model card or a CLI flag can say which network it means.

The MNIST and Fashion-MNIST pairs follow the paper (Appendix A.1-A.2): fully connected ReLU networks on the
flat 784-pixel input. The first layer is an ``nn.Linear`` on that flat input (no ``nn.Flatten`` in front),
because bound propagation bounds a first linear layer exactly only when it sees the input directly (DESIGN.md).

The CIFAR-10 pair is the paper's kind of small CNN (Table 3: Conv, ReLU, MaxPool, Flatten, Linear). Table 3's
text is partly corrupted; the reading here keeps its layer types and the teacher/student size ratio, with two
3x3 conv blocks (padding 1, so each 2x2 max-pool halves the side: 32 -> 16 -> 8) and one hidden linear layer.
Max-pools use stride == kernel, the case that CROWN (auto_LiRPA) and the exact MILP encoding both support.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


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
class CNNSpec:
    """``[Conv3x3(pad 1) -> ReLU -> MaxPool2x2] per channel count -> Flatten -> [Linear -> ReLU] -> Linear``."""

    input_shape: tuple[int, int, int]  # (channels, height, width)
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    num_classes: int

    @property
    def flat_features(self) -> int:
        side_h, side_w = self.input_shape[1], self.input_shape[2]
        for _ in self.channels:
            side_h, side_w = side_h // 2, side_w // 2
        return self.channels[-1] * side_h * side_w

    def describe(self) -> str:
        convs = " - ".join(f"conv3x3({c}) relu maxpool2" for c in self.channels)
        fcs = "".join(f" - linear({h}) relu" for h in self.hidden)
        shape = ", ".join(str(d) for d in self.input_shape)
        return f"CNN {convs} - flatten{fcs} - linear({self.num_classes}), input [N, {shape}], output logits"


Spec = MLPSpec | CNNSpec

ARCHITECTURES: dict[str, Spec] = {
    "mnist-teacher": MLPSpec(input_dim=784, hidden=(30,) * 6, num_classes=10),
    "mnist-student": MLPSpec(input_dim=784, hidden=(20,) * 4, num_classes=10),
    "cifar10-teacher": CNNSpec(input_shape=(3, 32, 32), channels=(16, 32), hidden=(100,), num_classes=10),
    "cifar10-student": CNNSpec(input_shape=(3, 32, 32), channels=(8, 16), hidden=(50,), num_classes=10),
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
    for out in spec.channels:
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
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


def build(name: str) -> nn.Sequential:
    """A freshly initialised network of the named architecture (seed torch first for reproducibility)."""
    spec = get_spec(name)
    return build_mlp(spec) if isinstance(spec, MLPSpec) else build_cnn(spec)
