"""The CUDA path: the same bounds as on the CPU (float64 both), sound, end to end. Skipped without a GPU; run on
one by `benchmarks/gpu_check.sh`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faithverify.attack import PGDConfig, input_box
from faithverify.bounds import crown
from faithverify.bounds.bab import NetworkBaB
from faithverify.bounds.bounder import BoundMethod, PairBounder, pair_specification
from faithverify.bounds.crown import Box
from faithverify.bounds.torchnet import BoundNetwork
from faithverify.certify import CertifyConfig, RefineMode, certify
from faithverify.pair import load_pair
from tests.test_soundness import sampled_max_gap

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def shipped(shipped_pair_paths: tuple[Path, Path]):
    pair = load_pair(*shipped_pair_paths)
    x = np.load(shipped_pair_paths[0].parent / "sample.npz")["x"][:64]
    return pair, x


@pytest.mark.parametrize("method", [BoundMethod.IBP, BoundMethod.CROWN, BoundMethod.COUPLED])
def test_screening_bounds_equal_the_cpus(shipped, method: BoundMethod) -> None:
    pair, x = shipped
    lower, upper = input_box(x, 0.05)
    cpu = PairBounder(pair, torch.device("cpu")).faith_ub(lower, upper, method)
    gpu = PairBounder(pair, torch.device("cuda")).faith_ub(lower, upper, method)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-9)


def test_alpha_crown_on_cuda_is_sound_and_tighter_than_crown(shipped) -> None:
    pair, x = shipped
    net = BoundNetwork.of(pair.teacher.network, "cuda")
    lower, upper = (torch.from_numpy(b).cuda() for b in input_box(x, 0.1))
    box, spec = Box.of(lower, upper), pair_specification(10).cuda()
    base, _ = crown.crown(net, box, spec)
    alpha = crown.alpha_crown(net, box, spec, iterations=20)
    assert torch.all(alpha.lower >= base)
    samples = lower[:8, None] + (upper - lower)[:8, None] * torch.rand(
        8, 4000, 784, device="cuda", dtype=torch.float64
    )
    z = net.forward(samples.reshape(-1, 784)).reshape(8, 4000, 10)
    assert torch.all((z @ spec.T).amin(dim=1) >= alpha.lower[:8] - 1e-9)


def test_branch_and_bound_on_cuda_agrees_with_the_cpu(shipped) -> None:
    pair, x = shipped
    lower, upper = input_box(x[:1], 0.05)
    weights = np.zeros(10)
    weights[3], weights[int(np.argmax(pair.outputs_onnxruntime(x[:1])["z_t"][0]))] = 1.0, -1.0
    results = []
    for device in ("cpu", "cuda"):
        bab = NetworkBaB(BoundNetwork.of(pair.teacher.network, device), lower[0], upper[0])
        results.append(bab.search(weights, time_limit=20))
    cpu, gpu = results
    assert gpu.bound >= gpu.best and cpu.bound >= cpu.best
    if cpu.exact and gpu.exact:
        assert gpu.bound == pytest.approx(cpu.bound, abs=1e-3 * (1 + abs(cpu.bound)))


def test_certify_on_cuda_matches_the_cpu_and_is_sound(shipped) -> None:
    pair, x = shipped
    x = x[:16]
    runs = {}
    for device in ("cpu", "cuda"):
        config = CertifyConfig(
            eps=[0.05], methods=(BoundMethod.CROWN, BoundMethod.ALPHA_CROWN, BoundMethod.COUPLED),
            pgd=PGDConfig(steps=50), robustness=False, device=device, refine_mode=RefineMode.NONE,
        )  # fmt: skip
        runs[device] = {r.index: r for r in certify(pair, x, None, config, progress=False)}
    sampled = sampled_max_gap(pair, x, 0.05, samples=1000)
    for k in range(len(x)):
        cpu, gpu = runs["cpu"][k], runs["cuda"][k]
        assert gpu.bounds["crown"] == pytest.approx(cpu.bounds["crown"], abs=1e-9)
        assert sampled[k] <= gpu.faith_ub and gpu.emp_lb <= gpu.faith_ub
