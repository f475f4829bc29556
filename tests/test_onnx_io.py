"""ONNX loading and ONNX -> torch conversion: exported and hand-built models, layouts, opsets, bad input."""

from __future__ import annotations

import copy
import io
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from faithverify.errors import ModelLoadError, UnsupportedOperatorError
from faithverify.onnx_io import (
    ConvertedModel,
    LoadedModel,
    input_and_output,
    load_model,
    load_model_proto,
    run_onnxruntime,
    strip_trailing_softmax,
)

# ----------------------------------------------------------------------------------------------------------
# Helpers


def export(
    model: nn.Module,
    shape: tuple[int, ...],
    opset: int | None = 13,
    dynamic: bool = True,
    keep_batchnorm: bool = False,
    initializers_as_inputs: bool = False,
) -> onnx.ModelProto:
    """TorchScript export (dynamo=False needs no onnxscript); opset None is the exporter's default."""
    buffer = io.BytesIO()
    kwargs: dict = {} if opset is None else {"opset_version": opset}
    if keep_batchnorm:  # without constant folding and in PRESERVE mode, BatchNormalization nodes stay
        kwargs.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.rand(1, *shape),),
            buffer,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None,
            keep_initializers_as_inputs=initializers_as_inputs,
            dynamo=False,
            **kwargs,
        )
    return onnx.load_from_string(buffer.getvalue())


def assert_matches_onnxruntime(loaded: LoadedModel, atol: float = 1e-5) -> None:
    """forward == onnxruntime (logits model) and flat_body == forward, at batch sizes 1 and 7."""
    module = copy.deepcopy(loaded.module).double()
    rng = np.random.default_rng(1)
    for n in (1, 7):
        x = rng.uniform(0.0, 1.0, (n, *loaded.input_shape)).astype(np.float32).astype(np.float64)
        expected = run_onnxruntime(loaded.onnx_model, x)
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
            flat = module.flat_body()(torch.from_numpy(x.reshape(n, -1))).numpy()
            got32 = loaded.module(torch.from_numpy(x).float()).double().numpy()
        assert got.shape == (n, loaded.num_classes)
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
        np.testing.assert_allclose(flat, got, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got32, expected, rtol=0, atol=1e-4)


def first_layers(body: nn.Module, k: int = 2) -> list[str]:
    return [type(m).__name__ for m in list(body.children())[:k]]


def tensor(name: str, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 13,
) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset >= 13 else 4  # what onnxruntime accepts for these opsets
    return model


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).normal(size=shape).astype(np.float32)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# ----------------------------------------------------------------------------------------------------------
# Torch models


def mlp(seed: int = 0, inputs: int = 784) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, 16), nn.ReLU(), nn.Linear(16, 10))


def mnist_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 10),
    )
    with torch.no_grad():  # non-trivial running statistics, so that folding BatchNorm is really tested
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def cifar_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 8, 3, dilation=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


class Wrap(nn.Module):
    """``body(prep(x))``: puts reshapes, transposes or a normalisation in front of a network."""

    def __init__(self, prep: str, body: nn.Module) -> None:
        super().__init__()
        self.prep, self.body = prep, body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prep == "reshape_batch":
            x = x.reshape(x.shape[0], -1)
        elif self.prep == "view_minus1":
            x = x.view(-1, 784)
        elif self.prep == "transpose":
            x = x.transpose(2, 3).flatten(1)
        elif self.prep == "normalize":
            x = ((x - 0.1307) / 0.3081).flatten(1)
        elif self.prep == "softmax":
            return torch.softmax(self.body(x), dim=1)
        return self.body(x)


# ----------------------------------------------------------------------------------------------------------
# Exported models


@pytest.mark.parametrize("opset", [9, 11, 13, 17, None])
def test_flat_mlp_all_opsets(opset: int | None) -> None:
    loaded = load_model_proto(export(mlp(), (784,), opset))
    assert loaded.input_shape == (784,) and loaded.num_classes == 10 and loaded.input_name == "x"
    assert not loaded.softmax_stripped and loaded.max_abs_diff <= 1e-5
    assert first_layers(loaded.module.flat_body()) == ["Linear", "ReLU"]
    assert_matches_onnxruntime(loaded)


@pytest.mark.parametrize(
    ("opset", "keep_batchnorm"), [(9, True), (11, False), (13, True), (17, True), (None, False)]
)
def test_mnist_cnn(opset: int | None, keep_batchnorm: bool) -> None:
    model = export(mnist_cnn(), (1, 28, 28), opset, keep_batchnorm=keep_batchnorm)
    assert ("BatchNormalization" in {n.op_type for n in model.graph.node}) == keep_batchnorm
    loaded = load_model_proto(model)
    assert loaded.input_shape == (1, 28, 28)
    # BatchNorm is folded into the preceding Conv.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.module.modules())
    assert first_layers(loaded.module.flat_body()) == ["Reshape", "Conv2d"]
    assert_matches_onnxruntime(loaded)


@pytest.mark.parametrize("dynamic", [True, False])
def test_cifar_cnn_fixed_and_dynamic_batch(dynamic: bool) -> None:
    model = export(cifar_cnn(), (3, 32, 32), 11, dynamic=dynamic)
    assert (model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1) != dynamic
    loaded = load_model_proto(model)
    assert loaded.input_shape == (3, 32, 32)
    assert_matches_onnxruntime(loaded)


@pytest.mark.parametrize("prep", ["reshape_batch", "view_minus1"])
@pytest.mark.parametrize(("opset", "dynamic"), [(9, True), (13, True), (13, False), (17, True)])
def test_column_input_reshaped(prep: str, opset: int, dynamic: bool) -> None:
    model = export(Wrap(prep, mlp()), (784, 1), opset, dynamic=dynamic)
    loaded = load_model_proto(model)
    assert loaded.input_shape == (784, 1)
    assert first_layers(loaded.module.flat_body(), 1) == ["Linear"]
    assert_matches_onnxruntime(loaded)


def test_shape_computed_reshape_is_followed() -> None:
    # x.reshape(x.shape[0], -1) with a dynamic batch exports Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
    model = export(Wrap("reshape_batch", mlp()), (784, 1), 13)
    assert "Shape" in {n.op_type for n in model.graph.node}
    assert_matches_onnxruntime(load_model_proto(model))


def test_transpose_in_front_is_folded_into_the_first_linear() -> None:
    loaded = load_model_proto(export(Wrap("transpose", mlp()), (1, 28, 28), 13))
    assert "Transpose" in {n.op_type for n in loaded.onnx_model.graph.node}
    assert any(type(m).__name__ == "Transpose" for m in loaded.module.layers)
    assert first_layers(loaded.module.flat_body(), 1) == ["Linear"]
    assert_matches_onnxruntime(loaded)


def test_normalization_in_front_is_folded_into_the_first_linear() -> None:
    loaded = load_model_proto(export(Wrap("normalize", mlp()), (1, 28, 28), 11))
    assert first_layers(loaded.module.flat_body(), 1) == ["Linear"]
    assert_matches_onnxruntime(loaded)


@pytest.mark.parametrize("opset", [9, 13, 17])
def test_final_softmax_is_stripped(opset: int, tmp_path: Path) -> None:
    original = export(Wrap("softmax", mlp()), (784,), opset)
    path = save(original, tmp_path / "softmax.onnx")
    loaded = load_model(path)
    assert loaded.softmax_stripped and loaded.path == path
    assert "Softmax" not in {n.op_type for n in loaded.onnx_model.graph.node}
    assert loaded.onnx_model.graph.output[0].name == original.graph.output[0].name
    x = np.random.default_rng(0).uniform(size=(5, 784))
    logits = run_onnxruntime(loaded.onnx_model, x)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(run_onnxruntime(path, x), probs, atol=1e-6)
    assert_matches_onnxruntime(loaded)


def test_initializers_listed_as_inputs() -> None:
    model = export(mnist_cnn(), (1, 28, 28), 9, initializers_as_inputs=True)
    assert len(model.graph.input) > 1
    loaded = load_model_proto(model)
    assert loaded.input_name == "x"
    assert_matches_onnxruntime(loaded)


def test_loaded_model_fields_and_module_state(tmp_path: Path) -> None:
    path = save(export(mnist_cnn(), (1, 28, 28), 13), tmp_path / "cnn.onnx")
    loaded = load_model(str(path), check=False)
    assert isinstance(loaded.module, ConvertedModel) and isinstance(loaded.module.layers, nn.ModuleList)
    assert math.isnan(loaded.max_abs_diff)
    assert not loaded.module.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in loaded.module.parameters())
    assert input_and_output(loaded.onnx_model) == ("x", (1, 28, 28), "y", 10)
    checked = load_model(path, domain=(-1.0, 2.0), n_check=4, seed=3)
    assert 0.0 <= checked.max_abs_diff <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_module_runs_on_cuda() -> None:
    loaded = load_model_proto(export(Wrap("normalize", mnist_cnn()), (1, 28, 28), 13))
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    cpu = copy.deepcopy(loaded.module).double()(x)
    cuda = copy.deepcopy(loaded.module).double().cuda()
    torch.testing.assert_close(cuda(x.cuda()).cpu(), cpu)
    torch.testing.assert_close(cuda.flat_body()(x.reshape(5, -1).cuda()).cpu(), cpu)


# ----------------------------------------------------------------------------------------------------------
# Hand-built graphs


def test_gemm_transb0_alpha_beta() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "B", "C"], ["h"], name="g1", alpha=0.5, beta=2.0, transB=0),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "B2", "C2"], ["y"], name="g2", transB=1),
    ]
    inits = {"B": rand(6, 5), "C": rand(1, 5), "B2": rand(3, 5), "C2": rand(3)}
    loaded = load_model_proto(make_model(nodes, [tensor("x", ["N", 6])], [tensor("y", ["N", 3])], inits, 11))
    assert loaded.num_classes == 3 and loaded.path is None
    assert_matches_onnxruntime(loaded)


def test_matmul_constant_left_on_column_input() -> None:
    nodes = [
        helper.make_node("MatMul", ["W", "x"], ["h"], name="left"),  # [4, 6] @ [N, 6, 1] -> [N, 4, 1]
        helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1),
        helper.make_node("MatMul", ["f", "W2"], ["z"], name="right"),
        helper.make_node("Add", ["c", "z"], ["y"], name="bias2"),
    ]
    inits = {"W": rand(4, 6), "b": rand(4, 1), "W2": rand(4, 3), "c": rand(3)}
    model = make_model(nodes, [tensor("x", ["N", 6, 1])], [tensor("y", ["N", 3])], inits)
    loaded = load_model_proto(model)
    assert loaded.input_shape == (6, 1)
    # The bias Adds are folded into the Linears; the flat body starts with the first Linear.
    assert not any(type(m).__name__ == "ConstAdd" for m in loaded.module.layers)
    assert first_layers(loaded.module.flat_body(), 1) == ["Linear"]
    assert_matches_onnxruntime(loaded)


def test_constant_nodes_sub_div_mul_identity_and_conv() -> None:
    nodes = [
        helper.make_node("Constant", [], ["c"], name="c", value=numpy_helper.from_array(rand(1, 2, 1, 1))),
        helper.make_node("Constant", [], ["two"], name="two", value_float=2.0),
        helper.make_node("Constant", [], ["target"], name="target", value_ints=[-1, 2 * 4 * 4]),
        helper.make_node("Sub", ["c", "x"], ["s"], name="c_minus_x"),
        helper.make_node("Div", ["s", "two"], ["d"], name="div"),
        helper.make_node("Mul", ["d", "m"], ["e"], name="mul"),
        helper.make_node("Identity", ["e"], ["i"], name="id"),
        helper.make_node("Conv", ["i", "W", "B"], ["v"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["v"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "target"], ["f"], name="reshape"),
        helper.make_node("Gemm", ["f", "G", "H"], ["y"], name="gemm", transB=1),
    ]
    inits = {"m": rand(4), "W": rand(2, 2, 3, 3), "B": rand(2), "G": rand(4, 32), "H": rand(4)}
    model = make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 4])], inits)
    loaded = load_model_proto(model, domain=(-1.0, 1.0))
    assert [type(m).__name__ for m in loaded.module.layers][:3] == ["ConstRSub", "ConstDiv", "ConstMul"]
    assert_matches_onnxruntime(loaded)


@pytest.mark.parametrize("opset", [7, 9, 14])
def test_batchnorm_old_and_new_opsets(opset: int) -> None:
    legacy = {"spatial": 1, "momentum": 0.9} if opset < 9 else {"momentum": 0.9} if opset < 14 else {}
    bn = ["scale", "bias", "mean", "var"]
    nodes = [
        # On the input (nothing to fold into), then after a Conv (folded into it).
        helper.make_node("BatchNormalization", ["x", *bn], ["n"], name="bn_in", epsilon=1e-3, **legacy),
        helper.make_node("Conv", ["n", "W"], ["v"], name="conv", kernel_shape=[2, 2]),
        helper.make_node(
            "BatchNormalization", ["v", *[b + "2" for b in bn]], ["m"], name="bn_conv", **legacy
        ),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node(
            "Gemm", ["f", "G", "H"], ["y"], name="gemm", transB=1
        ),  # C is optional from opset 11
    ]
    inits = {"scale": rand(3), "bias": rand(3), "mean": rand(3), "var": np.abs(rand(3)) + 0.1}
    inits |= {"W": rand(2, 3, 2, 2), "scale2": rand(2), "bias2": rand(2), "mean2": rand(2)}
    inits |= {"var2": np.abs(rand(2)) + 0.1, "G": rand(5, 2 * 4 * 4), "H": rand(5)}
    model = make_model(nodes, [tensor("x", ["N", 3, 5, 5])], [tensor("y", ["N", 5])], inits, opset)
    loaded = load_model_proto(model)
    assert [type(m).__name__ for m in loaded.module.layers][:3] == ["ConstMul", "ConstAdd", "Conv2d"]
    # In the flat body, the input BatchNorm (per channel, before an unpadded Conv) is folded into the Conv.
    assert first_layers(loaded.module.flat_body(), 3) == ["Reshape", "Conv2d", "ReLU"]
    assert_matches_onnxruntime(loaded)


def test_fixed_batch_one_with_hard_coded_reshape() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["f"], name="reshape"),
        helper.make_node("Gemm", ["f", "G", "H"], ["y"], name="gemm", transB=1),
    ]
    inits = {"shape": np.array([1, -1], dtype=np.int64), "G": rand(10, 784) / 28, "H": rand(10)}
    model = make_model(nodes, [tensor("x", [1, 1, 28, 28])], [tensor("y", [1, 10])], inits)
    loaded = load_model_proto(model)
    assert first_layers(loaded.module.flat_body(), 1) == ["Linear"]
    assert_matches_onnxruntime(loaded)  # onnxruntime runs the 7 samples one by one


def test_pooling_variants() -> None:
    nodes = [
        helper.make_node(
            "MaxPool", ["x"], ["p"], name="max", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node(
            "AveragePool",
            ["p"],
            ["a"],
            name="avg",
            kernel_shape=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        helper.make_node(
            "AveragePool", ["a"], ["b"], name="avg_same", kernel_shape=[3, 3], auto_pad="SAME_UPPER"
        ),
        helper.make_node("GlobalAveragePool", ["b"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "W"], ["y"], name="mm"),
    ]
    model = make_model(nodes, [tensor("x", ["N", 3, 9, 9])], [tensor("y", ["N", 4])], {"W": rand(3, 4)})
    assert_matches_onnxruntime(load_model_proto(model))


def test_softmax_behind_identity_and_flatten_is_stripped() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "G"], ["z"], name="gemm", transB=1),
        helper.make_node("Softmax", ["z"], ["p"], name="softmax", axis=1),
        helper.make_node("Identity", ["p"], ["q"], name="id"),
        helper.make_node("Flatten", ["q"], ["y"], name="flat"),
    ]
    model = make_model(nodes, [tensor("x", ["N", 6])], [tensor("y", ["N", 3])], {"G": rand(3, 6)}, 11)
    stripped, removed = strip_trailing_softmax(model)
    assert removed and "Softmax" not in {n.op_type for n in stripped.graph.node}
    assert "Softmax" in {n.op_type for n in model.graph.node}  # the input model is left alone
    assert strip_trailing_softmax(stripped) == (stripped, False)
    loaded = load_model_proto(model)
    assert loaded.softmax_stripped
    assert_matches_onnxruntime(loaded)


# ----------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_empty_truncated_and_text_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"missing\.onnx"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.onnx"):
        load_model(tmp_path / "empty.onnx")
    data = export(mnist_cnn(), (1, 28, 28)).SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"truncated\.onnx"):
        load_model(tmp_path / "truncated.onnx")
    (tmp_path / "text.onnx").write_text("this is not an ONNX model, just some text\n" * 3)
    with pytest.raises(ModelLoadError, match=r"text\.onnx") as info:
        load_model(tmp_path / "text.onnx")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh"])
def test_unsupported_operator_names_operator_node_and_file(op: str, tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "G"], ["z"], name="gemm", transB=1),
        helper.make_node(op, ["z"], ["a"], name="activation_7"),
        helper.make_node("Gemm", ["a", "G2"], ["y"], name="gemm2", transB=1),
    ]
    model = make_model(
        nodes, [tensor("x", ["N", 6])], [tensor("y", ["N", 3])], {"G": rand(5, 6), "G2": rand(3, 5)}
    )
    with pytest.raises(UnsupportedOperatorError) as info:
        load_model(save(model, tmp_path / "act.onnx"))
    message = str(info.value)
    assert op in message and "activation_7" in message and "act.onnx" in message and "\n" not in message
    assert info.value.op_type == op and info.value.node_name == "activation_7"


def test_two_inputs_and_two_outputs() -> None:
    two_in = make_model(
        [helper.make_node("Add", ["x", "x2"], ["y"], name="add")],
        [tensor("x", ["N", 3]), tensor("x2", ["N", 3])],
        [tensor("y", ["N", 3])],
    )
    with pytest.raises(ModelLoadError, match="2 inputs"):
        load_model_proto(two_in)
    two_out = make_model(
        [
            helper.make_node("Relu", ["x"], ["y"], name="r"),
            helper.make_node("Relu", ["y"], ["y2"], name="r2"),
        ],
        [tensor("x", ["N", 3])],
        [tensor("y", ["N", 3]), tensor("y2", ["N", 3])],
    )
    with pytest.raises(ModelLoadError, match="2 outputs"):
        load_model_proto(two_out)


def test_branching_graph_is_not_a_chain() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "G"], ["h"], name="gemm", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Add", ["h", "r"], ["y"], name="residual"),
    ]
    model = make_model(nodes, [tensor("x", ["N", 4])], [tensor("y", ["N", 4])], {"G": rand(4, 4)})
    with pytest.raises(UnsupportedOperatorError, match="not a feed-forward chain") as info:
        load_model_proto(model)
    assert info.value.node_name == "residual"


@pytest.mark.parametrize(
    ("node", "detail"),
    [
        (helper.make_node("Softmax", ["z"], ["a"], name="sm", axis=1), "final"),
        (helper.make_node("MaxPool", ["z"], ["a", "idx"], name="mp", kernel_shape=[1, 1]), "Indices"),
        (helper.make_node("MaxPool", ["z"], ["a"], name="mp", kernel_shape=[2, 2], ceil_mode=1), "ceil_mode"),
        (helper.make_node("Transpose", ["z"], ["a"], name="tr", perm=[1, 0, 2, 3]), "batch axis"),
        (helper.make_node("Flatten", ["z"], ["a"], name="fl", axis=0), "batch axis"),
    ],
)
def test_unsupported_placements_and_attributes(node: onnx.NodeProto, detail: str) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["z"], name="relu"),
        node,
        helper.make_node("Flatten", ["a"], ["f"], name="flat_end"),
        helper.make_node("Gemm", ["f", "G"], ["y"], name="gemm", transB=1),
    ]
    model = make_model(nodes, [tensor("x", ["N", 1, 2, 2])], [tensor("y", ["N", 3])], {"G": rand(3, 4)})
    with pytest.raises(UnsupportedOperatorError, match=detail) as info:
        load_model_proto(model)
    assert info.value.node_name == node.name


def test_softmax_over_the_batch_axis_is_rejected() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "G"], ["z"], name="gemm", transB=1),
        helper.make_node("Softmax", ["z"], ["y"], name="batch_softmax", axis=0),
    ]
    model = make_model(nodes, [tensor("x", ["N", 6])], [tensor("y", ["N", 3])], {"G": rand(3, 6)})
    with pytest.raises(UnsupportedOperatorError, match="batch_softmax"):
        load_model_proto(model)


def test_output_must_be_rank_two_logits() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")],
        [tensor("x", ["N", 2, 5])],
        [tensor("y", ["N", 2, 5])],
    )
    with pytest.raises(ModelLoadError, match=r"\[N, C\]"):
        load_model_proto(model)


def test_disagreement_with_onnxruntime_is_an_error() -> None:
    model = export(mlp(), (784,))
    with pytest.raises(ModelLoadError, match="disagrees with onnxruntime"):
        load_model_proto(model, tolerance=-1.0)


def test_run_onnxruntime_sources_and_errors(tmp_path: Path) -> None:
    model = export(mlp(inputs=5), (5,))
    path = save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).uniform(size=(3, 5))
    expected = run_onnxruntime(model, x)
    assert expected.dtype == np.float64 and expected.shape == (3, 10)
    for source in (path, str(path), model.SerializeToString()):
        np.testing.assert_array_equal(run_onnxruntime(source, x), expected)
    with pytest.raises(ModelLoadError):
        run_onnxruntime(b"not a model", x)
