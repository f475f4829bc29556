"""Named network architectures, so that a model card or a CLI flag can say which network it means.

The MNIST pair follows the paper (Appendix A.1): fully connected ReLU networks on the flat 784-pixel input.
The first layer is an ``nn.Linear`` on that flat input (no ``nn.Flatten`` in front), because bound propagation
bounds a first linear layer exactly only when it sees the input directly (see DESIGN.md).
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


ARCHITECTURES: dict[str, MLPSpec] = {
    "mnist-teacher": MLPSpec(input_dim=784, hidden=(30,) * 6, num_classes=10),
    "mnist-student": MLPSpec(input_dim=784, hidden=(20,) * 4, num_classes=10),
}


def get_spec(name: str) -> MLPSpec:
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


def build(name: str) -> nn.Sequential:
    """A freshly initialised network of the named architecture (seed torch first for reproducibility)."""
    return build_mlp(get_spec(name))
