"""The policy section of the contract and LeRobot's normalization formulas (runtime.policy)."""
import copy

import numpy as np
import pytest

from runtime.contract import Condition, ManifestError, manifest_dict, policy_of, validate_manifest
from runtime.policy import normalize, unnormalize

SCHED = {"kind": "squaredcos_cap_v2", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 100,
         "variance_type": "fixedsmall", "clip_denoised": True}
N, H, K, S, E, A = 2, 8, 4, 2, 3, 2
D = N * (S + E)


def policy_section():
    def mm():
        return {"mode": "min_max", "min": [0.0] * S, "max": [1.0] * S, "eps": 1e-8}
    return {
        "format": "lerobot.DiffusionPolicy", "n_obs_steps": N, "horizon": H, "n_action_steps": K,
        "action_start": N - 1,
        "encoder": {"file": "p-encoder.onnx", "sha256": "0" * 64,
                    "inputs": [{"name": "observation.state", "dtype": "float32", "shape": ["batch", N, S]},
                               {"name": "observation.environment_state", "dtype": "float32",
                                "shape": ["batch", N, E]}],
                    "outputs": [{"name": "global_cond", "dtype": "float32", "shape": ["batch", D]}],
                    "batch_range": {"min": 1, "opt": 1, "max": 8}},
        "observations": [{"name": "observation.state", "type": "STATE", "shape": [S], "normalization": mm()},
                         {"name": "observation.environment_state", "type": "ENV", "shape": [E],
                          "normalization": {"mode": "identity"}}],
        "image_features": [], "image_preprocess": None,
        "action": {"name": "action", "shape": [A], "normalization": mm()},
        "source": {},
    }


def manifest(policy=None):
    d = manifest_dict([H, A], SCHED, conditions=[Condition("global_cond", "vector", (D,), null="zeros")],
                      source={"checkpoint_sha256": "1" * 64})
    d["policy"] = policy_section() if policy is None else policy
    return d


def test_good_policy_section_validates():
    spec = policy_of(validate_manifest(manifest()))
    assert (spec.n_obs_steps, spec.horizon, spec.n_action_steps, spec.action_dim, spec.cond_dim) == (N, H, K, A, D)
    assert [o.name for o in spec.observations] == ["observation.state", "observation.environment_state"]


def test_manifest_without_policy_section_has_no_policy():
    d = manifest()
    del d["policy"]
    assert policy_of(validate_manifest(d)) is None


@pytest.mark.parametrize("edit, field", [
    (lambda p: p.update(action_start=0), "policy.action_start"),
    (lambda p: p.update(n_action_steps=H), "policy.n_action_steps"),
    (lambda p: p.update(horizon=H + 1), "policy.horizon"),
    (lambda p: p["encoder"]["outputs"][0].update(shape=["batch", D + 1]), "policy.encoder.outputs"),
    (lambda p: p["observations"][0]["normalization"].update(min=[0.0] * (S + 1)),
     "policy.observations[0].normalization.min"),
    (lambda p: p["observations"][0]["normalization"].update(mode="zscore"), "policy.observations[0].normalization"),
    (lambda p: p["action"].update(shape=[A + 1]), "policy.action"),
    (lambda p: p["encoder"].update(sha256="x"), "policy.encoder.sha256"),
])
def test_broken_policy_section_is_refused_naming_the_field(edit, field):
    p = copy.deepcopy(policy_section())
    edit(p)
    with pytest.raises(ManifestError, match="manifest " + field.replace("[", r"\[").replace("]", r"\]")):
        validate_manifest(manifest(p))


@pytest.mark.parametrize("mode, stats", [
    ("min_max", {"min": [0.0, 2.0, -1.0], "max": [2.0, 2.0, 5.0]}),
    ("quantiles", {"q01": [0.0, 2.0, -1.0], "q99": [2.0, 2.0, 5.0]}),
    ("quantile10", {"q10": [0.0, 2.0, -1.0], "q90": [2.0, 2.0, 5.0]}),
])
def test_range_normalization_matches_lerobot_formula(mode, stats):
    lo, hi = (np.asarray(v, np.float32) for v in stats.values())
    norm = dict(stats, mode=mode, eps=1e-8)
    x = np.array([[1.0, 2.0, 3.0], [0.5, 7.0, -1.0]], np.float32)
    d = np.where(hi - lo == 0, np.float32(1e-8), hi - lo)
    np.testing.assert_array_equal(normalize(x, norm), 2 * (x - lo) / d - 1)
    y = normalize(x, norm)
    np.testing.assert_array_equal(unnormalize(y, norm), (y + 1) / 2 * d + lo)


def test_mean_std_and_identity_match_lerobot_formula():
    norm = {"mode": "mean_std", "mean": [1.0, -2.0], "std": [0.5, 3.0], "eps": 1e-8}
    x = np.array([[2.0, 1.0]], np.float32)
    m, s = np.float32([1.0, -2.0]), np.float32([0.5, 3.0])
    np.testing.assert_array_equal(normalize(x, norm), (x - m) / (s + np.float32(1e-8)))
    np.testing.assert_array_equal(unnormalize(x, norm), x * s + m)  # LeRobot's inverse adds no eps
    np.testing.assert_array_equal(normalize(x, {"mode": "identity"}), x)
