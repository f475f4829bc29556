"""A canary for auto_LiRPA and torch: each test names the one bridge or private attribute that
`faithverify/bounds/lirpa.py` and `lirpa_compat.py` rely on, so that an upgrade of either library says which
one broke instead of failing deep inside a bound."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from faithverify.bounds.bounder import BoundMethod, NetworkBounder, pair_specification
from faithverify.bounds.lirpa import LirpaBounder
from faithverify.bounds.lirpa_compat import import_auto_lirpa


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def test_bridge_1_opset_version_lives_in_the_torchscript_exporter() -> None:
    """torch 2 removed ``symbolic_helper._set_opset_version``; the bridge writes the exporter's global."""
    from torch.onnx._internal.torchscript_exporter import _globals

    assert hasattr(_globals.GLOBALS, "export_onnx_opset_version"), "bridge 1 (_set_opset_version) broke"
    import_auto_lirpa()
    import torch.onnx.symbolic_helper as symbolic_helper

    assert hasattr(symbolic_helper, "_set_opset_version")


def test_bridge_2_node_attributes_read_through_kind_of() -> None:
    """torch 2 removed ``Node.__getitem__``; the bridge reads attributes by ``node.kindOf(key)``."""
    import_auto_lirpa()
    assert hasattr(torch._C.Node, "kindOf"), "bridge 2 (Node.__getitem__) broke: Node.kindOf is gone"
    LirpaBounder(_net(), 6)  # tracing reads node attributes through the bridge


def test_bridge_3_named_members_takes_remove_duplicate() -> None:
    """torch 2's ``named_parameters`` passes ``remove_duplicate``; auto_LiRPA 0.3's override lacks it."""
    auto_lirpa = import_auto_lirpa()
    params = inspect.signature(auto_lirpa.BoundedModule._named_members, follow_wrapped=False).parameters
    assert "remove_duplicate" in params, "bridge 3 (_named_members) broke"
    bounded = LirpaBounder(_net(), 6).module
    assert len(list(bounded.named_parameters())) > 0


def test_private_attributes_we_read_are_there() -> None:
    """``optimizable_activations`` (max-pools are taken out of alpha-CROWN) and ``_modules`` with ``BoundRelu``
    nodes whose input holds ``.lower``/``.upper`` after a bound (read by ``relu_input_bounds``)."""
    bounder = LirpaBounder(_net(), 6)
    assert hasattr(bounder.module, "optimizable_activations"), "BoundedModule.optimizable_activations is gone"
    x = torch.rand(2, 6, dtype=torch.float64)
    bounder.lower_bounds(x - 0.1, x + 0.1, pair_specification(3), "CROWN")
    kinds = bounder.relu_input_bounds()
    assert [k for k, _, _ in kinds] == ["relu"], "BoundedModule._modules no longer lists BoundRelu"
    assert kinds[0][1] is not None and kinds[0][2] is not None, (
        "a BoundRelu input no longer keeps .lower/.upper"
    )


def test_alpha_crown_runs_in_float64_under_the_dtype_toggle() -> None:
    """alpha-CROWN casts to ``torch.get_default_dtype()`` in its last step; ``_default_dtype`` keeps float64."""
    before = torch.get_default_dtype()
    x = torch.rand(3, 6, dtype=torch.float64)
    library = NetworkBounder(_net(), 6, 3, engine="auto_lirpa", alpha_iterations=3)
    lb = library.pair_lower_bounds(x - 0.1, x + 0.1, BoundMethod.ALPHA_CROWN)
    assert lb.dtype == torch.float64 and torch.get_default_dtype() == before
