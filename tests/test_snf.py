"""Stochastic normalizing flows: exact ΔS of the blocks, unbiased path weights, training, failures."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import boltzflow as bf
from boltzflow.cli import main
from boltzflow.flows import (
    BaseDistribution,
    Bijection,
    DefensiveLatent,
    SplineCoupling,
    alternating_masks,
    build_flow,
    save_model,
)
from boltzflow.flows.models import ModelFileError
from boltzflow.flows.snf import (
    SNF,
    InterpolatedEnergy,
    LangevinBlock,
    MetropolisBlock,
    build_snf,
    load_snf,
    save_snf,
    train_snf,
)
from boltzflow.flows.training import TrainingCheckpointError
from boltzflow.integrity import read_torch
from boltzflow.samplers import SAMPLERS

torch.set_num_threads(1)

EXACT_LOG_Z = 10.293479707073868  # data/reference.json, double_well_2d "exact"
EXACT_DF_B_MINUS_A = -1.6906307848638482
EXACT_P_B = 0.8443070962111392


def dw_torch(x: torch.Tensor) -> torch.Tensor:
    """The double_well_2d energy in plain torch (twice differentiable), an independent check."""
    return -0.5 * x[:, 0] - 6.0 * x[:, 0] ** 2 + x[:, 0] ** 4 + 0.5 * x[:, 1] ** 2


def u_lam_direct(x: torch.Tensor, lam: float) -> torch.Tensor:
    return (1.0 - lam) * 0.5 * (x**2).sum(1) + lam * dw_torch(x)


def grad_direct(x: torch.Tensor, lam: float) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(u_lam_direct(x, lam).sum(), x)
    return g


@pytest.fixture(scope="module")
def double_well():
    return bf.load_system("double_well_2d")


def annealing_snf(target, n_lambda: int = 10, step_size: float = 0.01, proposal_scale: float = 0.3) -> SNF:
    """Identity flow + Langevin and Metropolis blocks on λ = 1/n, ..., 1 (an SNF without flow layers)."""
    layers = []
    for lam in np.linspace(0.0, 1.0, n_lambda + 1)[1:]:
        layers += [LangevinBlock(lam, step_size, n_steps=2), MetropolisBlock(lam, proposal_scale, n_steps=2)]
    return SNF(BaseDistribution(2), layers, target).double()


# ---------------------------------------------------------------- (a) Langevin ΔS
@pytest.mark.parametrize("target_kind", ["torch", "energy"])
def test_langevin_delta_s_is_log_ratio_of_gaussian_transition_densities(double_well, target_kind):
    target = dw_torch if target_kind == "torch" else double_well.energy
    energy = InterpolatedEnergy(target)
    gen = torch.Generator().manual_seed(1)
    eps = 0.02
    for lam in torch.rand(4, generator=gen, dtype=torch.float64).tolist() + [0.0, 1.0]:
        x = 2.0 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
        y, delta_s = LangevinBlock(lam, step_size=eps, n_steps=1)(x, energy, gen)
        sd = math.sqrt(2 * eps)
        log_fwd = torch.distributions.Normal(x - eps * grad_direct(x, lam), sd).log_prob(y).sum(1)
        log_bwd = torch.distributions.Normal(y - eps * grad_direct(y, lam), sd).log_prob(x).sum(1)
        torch.testing.assert_close(delta_s, log_bwd - log_fwd, rtol=1e-9, atol=1e-9)
        assert delta_s.abs().max() > 1e-3  # not trivially zero


def test_langevin_steps_accumulate_delta_s():
    energy = InterpolatedEnergy(dw_torch)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y3, s3 = LangevinBlock(0.7, 0.01, n_steps=3)(x, energy, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    y, s = x, torch.zeros(32, dtype=torch.float64)
    for _ in range(3):
        y, ds = LangevinBlock(0.7, 0.01, n_steps=1)(y, energy, gen)
        s = s + ds
    torch.testing.assert_close(y3, y)
    torch.testing.assert_close(s3, s)


# ---------------------------------------------------------------- (b) Metropolis ΔS
def test_metropolis_delta_s_is_energy_difference_when_accepted_zero_when_rejected(double_well):
    energy = InterpolatedEnergy(double_well.energy)
    gen = torch.Generator().manual_seed(4)
    for lam in [0.0, 0.35, 0.8, 1.0]:
        x = torch.randn(400, 2, generator=gen, dtype=torch.float64) + torch.tensor([1.5, 0.0], dtype=torch.float64)
        block = MetropolisBlock(lam, proposal_scale=0.5, n_steps=1)
        y, delta_s = block(x, energy, gen)
        accepted = (y != x).any(dim=1)
        assert 0 < int(accepted.sum()) < len(x)  # both cases occur
        du = u_lam_direct(y, lam) - u_lam_direct(x, lam)
        expected = torch.where(accepted, du, torch.zeros_like(du))
        torch.testing.assert_close(delta_s, expected, rtol=1e-9, atol=1e-9)
        # Metropolis rule: a move downhill in u_λ is never rejected ...
        assert bool((du[accepted] < 0).any())
        assert block.last_acceptance == pytest.approx(float(accepted.double().mean()))


# ---------------------------------------------------------------- (c) unbiased log Z and ΔF
def test_stochastic_blocks_only_give_unbiased_log_z_and_delta_f(double_well):
    snf = annealing_snf(double_well.energy)
    s = bf.sample(double_well, sampler="snf", n=3000, seed=1, model=snf, progress=False)
    assert s.metadata["sampler"] == "snf" and s.metadata["normalized_proposal"] and not s.metadata["correlated"]
    assert len(s.metadata["mc_acceptance"]) == 10 and all(0.3 < a < 1 for a in s.metadata["mc_acceptance"])
    log_z = bf.estimate.log_partition_function(s)
    df = bf.estimate.free_energy_difference(s, lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 0)
    assert log_z.reliable and df.reliable
    assert abs(log_z.value - EXACT_LOG_Z) < 4 * log_z.error
    assert abs(df.value - EXACT_DF_B_MINUS_A) < 4 * df.error
    assert log_z.error < 0.1 and df.error < 0.15  # the check has teeth

    # The same paths without their ΔS terms (or with them mis-signed) are visibly biased.
    with torch.no_grad():
        out = snf(3000, torch.Generator().manual_seed(5))
    log_w, delta_s = out.log_weights.numpy(), out.delta_s.numpy()
    for wrong in (log_w - delta_s, log_w - 2 * delta_s):
        bad = bf.SampleSet(x=out.x.numpy(), energies=out.u_target.numpy(), log_weights=wrong,
                           metadata={"normalized_proposal": True})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = bf.estimate.log_partition_function(bad)
        assert abs(est.value - EXACT_LOG_Z) > max(4 * est.error, 1.0)


def test_gaussian_target_log_z():
    mean, sd = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    system = bf.System.from_energy(lambda x: 0.5 * (((x - mean) / sd) ** 2).sum(-1), dim=2, name="gauss")
    exact = math.log(2 * math.pi * 0.5 * 2.0)
    s = bf.sample(system, sampler="snf", n=2000, seed=2, model=annealing_snf(system.energy, 10, 0.1, 0.5), progress=False)
    log_z = bf.estimate.log_partition_function(s)
    assert abs(log_z.value - exact) < 4 * log_z.error and log_z.error < 0.1
    mean_x = [bf.estimate.expectation(s, lambda x, i=i: x[:, i]) for i in range(2)]
    for est, m in zip(mean_x, mean.tolist()):
        assert abs(est.value - m) < 4 * est.error


class _Shrink(Bijection):
    """``x = s·z``: a deliberately narrow deterministic layer."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.s * z, torch.full(z.shape[:1], z.shape[1] * math.log(self.s), dtype=z.dtype)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x / self.s, torch.full(x.shape[:1], -x.shape[1] * math.log(self.s), dtype=x.dtype)


def test_defensive_base_keeps_path_weights_exact_and_tames_a_narrow_snfs_tail():
    # Target N(0, I_4); the SNF shrinks its base by 0.6 (weights of infinite variance below 1/√2) and
    # adds one Langevin block. Measured over seeds 0-7, 2000 paths: defensive=0 gives k̂ 0.60-0.97
    # (every run flagged, z down to −5.8); the default defensive mixture k̂ 0.13-0.39, z −1.4 … +0.5.
    system = bf.System.from_energy(lambda x: 0.5 * (x**2).sum(-1), dim=4, name="gauss4")
    exact = 2 * math.log(2 * math.pi)
    snf = SNF(BaseDistribution(4), [_Shrink(0.6), LangevinBlock(0.5, 0.02, 2)], system.energy).double()
    z, k_plain = [], []
    for seed in range(4):
        s = bf.sample(system, sampler="snf", n=2000, seed=seed, model=snf, progress=False)
        assert s.metadata["defensive"] == 0.1 and s.metadata["defensive_scale"] == 1.5
        log_z = bf.estimate.log_partition_function(s)
        assert log_z.reliable and log_z.pareto_k < 0.5
        z.append((log_z.value - exact) / log_z.error)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = bf.sample(system, sampler="snf", n=2000, seed=seed, model=snf, defensive=0.0, progress=False)
            k_plain.append(bf.estimate.log_partition_function(plain).pareto_k)
    assert max(abs(v) for v in z) < 3.5
    assert min(k_plain) > 0.5  # without the mixture the tail is heavy (the check has teeth)


def test_defensive_base_widens_only_normal_features_and_uses_the_mixture_density():
    base = BaseDistribution(3, circular=[False, True, False]).double()
    snf = SNF(base, [], lambda x: 0.5 * (x**2).sum(-1)).double()
    latent = DefensiveLatent(0.5, 3.0)
    out = snf(20_000, torch.Generator().manual_seed(0), evaluate_target=False, latent=latent)
    z = out.z
    assert float(z[:, 1].abs().max()) < math.pi  # the circular feature stays uniform
    assert float(z[:, 0].var()) == pytest.approx(0.5 + 0.5 * 9.0, rel=0.05)
    expected = -math.log(2 * math.pi) + latent.log_prob(z[:, [0, 2]])
    assert torch.allclose(out.log_prob_base, expected)
    plain = snf(10, torch.Generator().manual_seed(0), evaluate_target=False)
    assert torch.allclose(plain.log_prob_base, base.log_prob(plain.z))


# ---------------------------------------------------------------- (d) end-to-end training
def test_training_reduces_reverse_kl_and_increases_ess(double_well):
    torch.manual_seed(0)
    masks = alternating_masks(2, 4)
    coupling = [SplineCoupling(m, hidden=(32, 32), num_bins=8, tail_bound=4.0) for m in masks]
    layers = [coupling[0], coupling[1], LangevinBlock(0.5, 0.01, 2), coupling[2], coupling[3], LangevinBlock(1.0, 0.01, 2)]
    snf = SNF(BaseDistribution(2), layers, double_well.energy).double()

    def evaluate(seed: int):
        s = bf.sample(double_well, sampler="snf", n=4000, seed=seed, model=snf, progress=False)
        return s, bf.estimate.relative_ess(s)

    _, ess_before = evaluate(100)
    history = train_snf(snf, n_iterations=100, batch_size=128, lr=5e-3, seed=1)
    assert np.mean(history.loss[-20:]) < np.mean(history.loss[:20]) - 1.0
    assert np.mean(history.relative_ess[-20:]) > np.mean(history.relative_ess[:20])
    s, ess_after = evaluate(101)
    # over torch seeds 0-3: ESS 0.095 before, 0.30-0.76 after (reverse KL at this lr ends anywhere in that
    # range, depending on the floating-point path); P_B within 1.9 sigma, its error 0.005-0.017
    assert ess_after > max(2 * ess_before, 0.2)
    p_b = bf.estimate.expectation(s, lambda x: (x[:, 0] > 0).astype(float))
    assert abs(p_b.value - EXACT_P_B) < 4 * p_b.error and p_b.error < 0.03
    log_z = bf.estimate.log_partition_function(s)
    assert abs(log_z.value - EXACT_LOG_Z) < 4 * log_z.error


# ---------------------------------------------------------------- (e) failures
def test_nan_energy_region_gets_zero_weight_and_is_counted():
    def fn(x: torch.Tensor) -> torch.Tensor:
        u = dw_torch(x)
        return torch.where(x[:, 0] > 1.5, torch.full_like(u, math.nan), u)

    system = bf.System.from_energy(fn, dim=2, name="dw_nan")
    snf = annealing_snf(system.energy, 5)
    s = bf.sample(system, sampler="snf", n=1000, seed=3, model=snf, progress=False, batch_size=500)
    in_nan = s.x[:, 0] > 1.5
    assert in_nan.any() and s.n_failed == int(in_nan.sum())
    assert np.all(np.isinf(s.energies[in_nan])) and np.all(s.log_weights[in_nan] == -np.inf)
    # Paths that left the failed region by a Metropolis move have ΔS = −inf (the reverse move is
    # impossible): zero weight, counted separately; every other path keeps a finite weight.
    zero_elsewhere = ~in_nan & ~np.isfinite(s.log_weights)
    n_invalid = s.metadata["n_invalid_path"]
    assert 0 < int(zero_elsewhere.sum()) <= n_invalid <= int(zero_elsewhere.sum() + in_nan.sum())
    assert np.isfinite(s.log_weights).sum() > 500
    assert math.isfinite(bf.estimate.log_partition_function(s).value)
    # training with failures drops them, counts them, and does not crash
    layers = [SplineCoupling(m, hidden=(8,), num_bins=4) for m in alternating_masks(2, 2)] + list(snf.layers)
    history = train_snf(SNF(BaseDistribution(2), layers, system.energy).double(), n_iterations=2, batch_size=256)
    assert all(math.isfinite(v) for v in history.loss) and sum(history.n_dropped) > 0


def test_sampler_registry_and_errors(double_well):
    assert "snf" in SAMPLERS
    with pytest.raises(ValueError, match="needs model="):
        bf.sample(double_well, sampler="snf", n=10, progress=False)
    with pytest.raises(TypeError, match="SNF file path or"):
        bf.sample(double_well, sampler="snf", n=10, model=3, progress=False)
    with pytest.raises(ModelFileError, match="does not exist"):
        bf.sample(double_well, sampler="snf", n=10, model="no/such/snf.pt", progress=False)
    with pytest.raises(ValueError, match="dimension"):
        bf.sample(double_well, sampler="snf", n=10, model=SNF(BaseDistribution(3), [], double_well.energy).double(),
                  progress=False)


# ---------------------------------------------------------------- (f) built SNFs, model files, checkpoints, CLI
def _tiny_snf(system: bf.System, n_blocks: int = 2, block: str = "metropolis", perturb: float = 0.3) -> SNF:
    """A small built SNF with random (non-identity) coupling weights."""
    torch.manual_seed(0)
    snf = build_snf(system, n_layers=2, n_blocks=n_blocks, block=block, n_steps=2, hidden=(8,), num_bins=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in snf.parameters():
            parameter.add_(perturb * torch.randn(parameter.shape, generator=g, dtype=parameter.dtype))
    return snf


def test_build_snf_interleaves_couplings_and_blocks_on_a_lambda_schedule(double_well):
    def layout(snf):
        return [f"{type(layer).__name__[0]}{getattr(layer, 'lam', '')}" for layer in snf.layers]

    snf = build_snf(double_well, n_layers=4, n_blocks=2, block="langevin", step_size=0.02, n_steps=3)
    assert layout(snf) == ["S", "S", "L0.5", "S", "S", "L1.0"]
    assert snf.layers[2].step_size == 0.02 and snf.layers[2].n_steps == 3 and snf.energy.target is double_well.energy
    assert layout(build_snf(double_well, n_layers=4, n_blocks=3)) == ["S", "S", "M0.3333333333333333", "S",
                                                                     "M0.6666666666666666", "S", "M1.0"]
    assert layout(build_snf(double_well, kind="affine", n_layers=3, n_blocks=0)) == ["A", "A", "A"]
    with pytest.raises(ValueError, match="toy systems"):
        build_snf(bf.load_system("dw4"))
    with pytest.raises(ValueError, match="unknown SNF block 'hmc'"):
        build_snf(double_well, block="hmc")


def test_saved_snf_gives_identical_samples_and_weights(double_well, tmp_path):
    snf = _tiny_snf(double_well)
    path = save_snf(snf, tmp_path / "run" / "snf.pt", {"note": "test"})
    loaded = load_snf(path, double_well)
    assert loaded.config == snf.config and loaded.metadata == {"note": "test"}
    options = {"n": 600, "seed": 4, "batch_size": 256, "progress": False}
    direct = bf.sample(double_well, sampler="snf", model=snf, **options)
    from_file = bf.sample(double_well, sampler="snf", model=str(path), **options)
    assert np.array_equal(direct.x, from_file.x) and np.array_equal(direct.log_weights, from_file.log_weights)
    assert from_file.metadata["model"] == str(path.resolve()) and direct.metadata["model"] == "in-memory SNF"
    assert from_file.metadata["mc_acceptance"] == direct.metadata["mc_acceptance"]
    assert np.isfinite(direct.log_weights).all() and direct.log_weights.std() > 0.1  # a non-trivial SNF


def test_corrupted_or_mismatched_snf_files_raise_clear_errors(double_well, tmp_path):
    path = save_snf(_tiny_snf(double_well), tmp_path / "snf.pt")
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupted"):
        load_snf(tmp_path / "truncated.pt", double_well)
    (tmp_path / "noise.pt").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="corrupted"):
        load_snf(tmp_path / "noise.pt", double_well)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_snf(tmp_path / "missing.pt", double_well)
    flow_file = save_model(build_flow(double_well, hidden=(8,), n_layers=2), tmp_path / "flow.pt")
    with pytest.raises(ModelFileError, match="normalizing-flow model, not an SNF"):
        load_snf(flow_file, double_well)
    payload = read_torch(path, "SNF file", "re-train it")  # the state inside the checksummed file
    torch.save({**payload, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="format version 99"):
        load_snf(tmp_path / "future.pt", double_well)
    torch.save({**payload, "state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(ModelFileError, match="does not match its configuration"):
        load_snf(tmp_path / "empty.pt", double_well)
    three_d = bf.System.from_energy(lambda x: 0.5 * (x**2).sum(-1), dim=3, name="normal3")
    other = save_snf(_tiny_snf(three_d), tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="dimension 3"):
        load_snf(other, double_well)
    with pytest.raises(ValueError, match="made by build_snf"):
        save_snf(annealing_snf(dw_torch), tmp_path / "hand_made.pt")


class _Interrupt(bf.energy.FunctionEnergy):
    """The double-well energy raising KeyboardInterrupt at its n-th evaluation (a Ctrl-C)."""

    def __init__(self, after: int) -> None:
        super().__init__(dw_torch, dim=2)
        self.after = after

    def _evaluate(self, x, need_gradient):
        self.after -= 1
        if self.after == 0:
            raise KeyboardInterrupt
        return super()._evaluate(x, need_gradient)


def _dw_system(interrupt_after: int | None = None) -> bf.System:
    system = bf.System.from_energy(dw_torch, dim=2, name="dw")
    if interrupt_after is not None:
        system.energy = _Interrupt(interrupt_after)
    return system


def test_interrupted_snf_training_resumes_exactly(tmp_path):
    options = {"n_iterations": 6, "batch_size": 64, "lr": 5e-3, "seed": 2, "progress": False}
    reference = _tiny_snf(_dw_system(), perturb=0.0)
    expected = train_snf(reference, **options)
    # Every iteration evaluates the energy 2 x (2 + 1) times in the blocks and once at the end:
    # interrupted inside the 4th iteration, after 3 checkpointed ones.
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train_snf(_tiny_snf(_dw_system(interrupt_after=3 * 7 + 4), perturb=0.0), checkpoint=ckpt,
                  checkpoint_seconds=0.0, **options)
    assert read_torch(ckpt, "training checkpoint", "delete it")["iteration"] == 3
    resumed = _tiny_snf(_dw_system(), perturb=0.5)  # other initial weights: the checkpoint's are loaded
    history = train_snf(resumed, checkpoint=ckpt, checkpoint_seconds=0.0, **options)
    assert history.loss == expected.loss and history.relative_ess == expected.relative_ess
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(TrainingCheckpointError, match="different run"):
        train_snf(_tiny_snf(_dw_system()), checkpoint=ckpt, **{**options, "seed": 3})


def test_interrupted_snf_sampling_resumes_exactly(tmp_path):
    options = {"n": 400, "seed": 1, "batch_size": 100, "progress": False, "checkpoint_seconds": 0.0}
    snf = _tiny_snf(_dw_system())
    reference = bf.sample(_dw_system(), sampler="snf", model=snf, **options)
    ckpt = tmp_path / "ckpt.npz"
    interrupted = _dw_system()
    snf.energy.target = _Interrupt(after=2 * 7 + 3)  # the paths' energies fail in the 3rd batch
    with pytest.raises(KeyboardInterrupt):
        bf.sample(interrupted, sampler="snf", model=snf, checkpoint=ckpt, **options)
    with np.load(ckpt) as saved:
        assert saved["x"].shape == (200, 2)  # two batches were kept; the run continues from there
    snf.energy.target = _dw_system().energy
    resumed = bf.sample(_dw_system(), sampler="snf", model=snf, checkpoint=ckpt, **options)
    assert np.array_equal(resumed.x, reference.x) and np.array_equal(resumed.log_weights, reference.log_weights)
    assert resumed.metadata.pop("resumed_from") == {"done": 200} and resumed.metadata.pop("resumed")
    assert reference.metadata.pop("resumed") is False and resumed.metadata == reference.metadata


def test_cli_trains_an_snf_and_samples_from_it(tmp_path):
    run = tmp_path / "train"
    args = ["train", "double_well_2d", "--snf", "--out", str(run), "--iterations", "4", "--batch-size", "64",
            "--layers", "2", "--hidden", "8", "--bins", "4", "--snf-steps", "2", "--quiet"]
    assert main(args) == 0
    assert (run / "snf.pt").exists() and not (run / "checkpoint.pt").exists()
    assert load_snf(run / "snf.pt", bf.load_system("double_well_2d")).metadata["iterations"] == 4
    assert main(args) == 2  # the model exists: no silent overwrite
    out = tmp_path / "samples"
    assert main(["sample", "double_well_2d", "--sampler", "snf", "--model", str(run / "snf.pt"), "--n", "300",
                 "--out", str(out), "--quiet", "--no-plot"]) == 0
    samples = bf.SampleSet.load(out)
    assert samples.metadata["sampler"] == "snf" and samples.metadata["normalized_proposal"] and len(samples) == 300
    assert samples.metadata["model"] == str((run / "snf.pt").resolve()) and len(samples.metadata["mc_acceptance"]) == 2
    assert not (out / "checkpoint.npz").exists()
    assert main(["sample", "double_well_2d", "--sampler", "flow", "--model", str(run / "snf.pt"), "--n", "10",
                 "--out", str(tmp_path / "wrong"), "--quiet", "--no-plot"]) == 2  # not a flow model
    assert main(["train", "double_well_2d", "--snf", "--data", str(out), "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2  # SNF training takes no data
