"""Bridges between auto_LiRPA 0.3 (written for torch < 1.13) and torch 2.

auto_LiRPA 0.3 is the only installable release, and it pins ``torch<1.13``; we install it with
``--no-deps``. Three torch-2 changes break it, and each is bridged here, before auto_LiRPA is first
imported (importing ``auto_LiRPA`` through :func:`import_auto_lirpa` guarantees the order):

1. ``torch.onnx.symbolic_helper._set_opset_version`` no longer exists; ``parse_graph`` imports it at module
   level. The opset now lives in the TorchScript exporter's ``GLOBALS.export_onnx_opset_version``.
2. ``torch._C.Node.__getitem__`` (``node["value"]``) is gone; ``parse_graph`` reads every node attribute
   that way. The typed accessor is named by ``node.kindOf(key)`` (``"f"``, ``"i"``, ``"t"``, ``"is"``...).
3. ``BoundedModule._named_members`` overrides ``nn.Module._named_members`` without the
   ``remove_duplicate`` argument that torch 2's ``named_parameters`` passes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

_PATCHED = False


def _set_opset_version(opset: int) -> None:
    from torch.onnx._internal.torchscript_exporter import _globals

    _globals.GLOBALS.export_onnx_opset_version = opset


def _node_getitem(node: Any, key: str) -> Any:
    return getattr(node, node.kindOf(key))(key)


def _patch_torch() -> None:
    import torch.onnx.symbolic_helper as symbolic_helper

    if not hasattr(symbolic_helper, "_set_opset_version"):
        symbolic_helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = _node_getitem  # type: ignore[attr-defined,method-assign]


def _patch_auto_lirpa(bound_general: ModuleType) -> None:
    cls = bound_general.BoundedModule
    original = cls._named_members
    if "remove_duplicate" in inspect.signature(original).parameters:
        return

    @functools.wraps(original)
    def _named_members(
        self: Any, get_members_fn: Any, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Any:
        # auto_LiRPA always de-duplicates, which is what torch's default asks for.
        return original(self, get_members_fn, prefix=prefix, recurse=recurse)

    cls._named_members = _named_members


@contextlib.contextmanager
def _without_simplefilter() -> Iterator[None]:
    original = warnings.simplefilter
    warnings.simplefilter = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.simplefilter = original


def import_auto_lirpa() -> ModuleType:
    """Import ``auto_LiRPA`` with the torch-2 bridges in place; safe to call many times."""
    global _PATCHED
    _patch_torch()
    # auto_LiRPA 0.3 calls warnings.simplefilter("once") at import (bound_general.py, utils.py), which would
    # override every warning filter of the host program; and it decorates helpers with torch.jit.script,
    # which torch 2 marks deprecated. So its import runs with simplefilter disabled and that warning ignored.
    with warnings.catch_warnings(), _without_simplefilter():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import auto_LiRPA
        import auto_LiRPA.bound_general as bound_general

    if not _PATCHED:
        _patch_auto_lirpa(bound_general)
        _PATCHED = True
    return auto_LiRPA
