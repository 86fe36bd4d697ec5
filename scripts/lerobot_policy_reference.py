"""LeRobot 0.4.4's own DiffusionPolicy as the reference (run ONLY with the LeRobot venv's python;
imports nothing from ddpm_export or runtime).

  make  --kind state|image --seed S --out DIR [--scheduler DDPM|DDIM --steps N] [--cameras 1|2] [--size pusht]
        a tiny random-init policy (down_dims (16, 32), horizon 8, n_obs_steps 2,
        n_action_steps 4; image kind: 3x32x32 cameras, crop (28, 28), resnet18 with group norm)
        with made-up normalization stats, saved with save_pretrained + its pre/post processors.
  chunk --policy DIR --inputs IN.npz --out OUT.npz
        raw network outputs at given inputs: IN.npz holds the NORMALIZED history
        (observation.state [B, n_obs, S], observation.images [B, n_obs, n_cam, C, H, W],
        observation.environment_state [B, n_obs, E] as the policy has them), x_t [B, horizon, A],
        t int [B]; OUT.npz gets global_cond [B, D] and eps [B, horizon, A] (unet(x_t, t, global_cond)).
  folder --src IN --out DIR
        a LeRobot folder rebuilt from a ddpm-export checkpoint's parts (IN: config.json,
        model.safetensors in LeRobot's names, stats.npz "feature.stat"): LeRobot's own policy,
        strict weight load, processors from the stats (ddpm_export.evaluation.bench_policy).
  bench --policy DIR --obs OBS.npz --out OUT.json [--chunks N --scheduler DDPM|DDIM --steps S --threads K]
        seconds per chunk of select_action (pre/post processors included) at one raw observation
        OBS.npz (feature name -> [B, *shape]); encoder and denoiser time apart.
  run   --policy DIR --obs EPISODE.npz --noise NOISE.npz --out ACTIONS.npz
        LeRobot's select_action with its pre/post processors over an episode.
        EPISODE.npz: one array per feature name, [T, B, *shape] (raw units; step i is obs[i]).
        NOISE.npz: for the k-th predicted chunk (k = 0, 1, ...): "x_T_<k>" [B, horizon, A] and
        "z_<k>" [n_steps, B, horizon, A], z_<k>[i] being the noise the scheduler's i-th step
        (i in timestep order, from the first, largest t) draws; DDPM's last step (t = 0) draws
        none in diffusers, so z_<k> may hold n_steps rows of which the t = 0 row is ignored, or
        n_steps - 1. ACTIONS.npz: "actions" [T, B, A] raw units, "draws" [n_chunks] the number
        of step noises each chunk consumed (a missing row raises IndexError/KeyError: no silent reuse).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def _config(kind: str, scheduler: str, steps, cameras: int, size: str = "tiny"):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    if size == "pusht":  # the PushT shape of issue 26's measurement; LeRobot's defaults otherwise
        return DiffusionConfig(
            input_features={"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,)),
                            "observation.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96))},
            output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
            crop_shape=(84, 84), crop_is_random=False, down_dims=(64, 128, 256), use_group_norm=True,
            pretrained_backbone_weights=None, noise_scheduler_type=scheduler, num_inference_steps=steps,
            device="cpu")

    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(3,))}
    if kind == "state":
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(4,))
    else:
        for c in range(cameras):
            name = "observation.image" if cameras == 1 else f"observation.images.cam{c}"
            inputs[name] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 32, 32))
    return DiffusionConfig(
        input_features=inputs, output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=(16, 32), diffusion_step_embed_dim=16,
        kernel_size=3, n_groups=8, crop_shape=(28, 28) if kind == "image" else None, crop_is_random=False,
        vision_backbone="resnet18", pretrained_backbone_weights=None, use_group_norm=True,
        spatial_softmax_num_keypoints=8, use_separate_rgb_encoder_per_camera=(cameras > 1),
        noise_scheduler_type=scheduler, num_inference_steps=steps, num_train_timesteps=100,
        device="cpu")


def _stats(cfg, rng):
    stats = {}
    for name, f in list(cfg.input_features.items()) + list(cfg.output_features.items()):
        shape = tuple(f.shape)
        if f.type.value == "VISUAL":
            shape = (shape[0], 1, 1)
        lo = rng.uniform(-2, 0, shape).astype(np.float32)
        hi = lo + rng.uniform(0.5, 3, shape).astype(np.float32)
        stats[name] = {"min": lo, "max": hi, "mean": ((lo + hi) / 2).astype(np.float32),
                       "std": rng.uniform(0.2, 1.5, shape).astype(np.float32)}
    return stats


def cmd_make(a):
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    torch.manual_seed(a.seed)
    cfg = _config(a.kind, a.scheduler, a.steps, a.cameras, a.size)
    policy = DiffusionPolicy(cfg)
    # random init leaves GroupNorm affine at 1/0; perturb every parameter so the test sees them
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=_stats(cfg, np.random.default_rng(a.seed)))
    out = Path(a.out)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    print(out)


def _load(d):
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    p = DiffusionPolicy.from_pretrained(d)
    p.eval()
    return p


def cmd_chunk(a):
    p = _load(a.policy)
    z = dict(np.load(a.inputs))
    batch = {k: torch.from_numpy(v) for k, v in z.items() if k.startswith("observation.")}
    with torch.no_grad():
        gc = p.diffusion._prepare_global_conditioning(batch)
        eps = p.diffusion.unet(torch.from_numpy(z["x_t"]), torch.from_numpy(z["t"]).long(), global_cond=gc)
    np.savez(a.out, global_cond=gc.numpy(), eps=eps.numpy())


def _processors(d):
    """(pre, post): what lerobot.policies.factory.make_pre_post_processors(cfg, pretrained_path=DIR)
    does, without the factory module (it imports gymnasium through lerobot.envs)."""
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import (batch_to_transition, policy_action_to_transition,
                                              transition_to_batch, transition_to_policy_action)

    pre = PolicyProcessorPipeline.from_pretrained(d, config_filename="policy_preprocessor.json",
                                                  to_transition=batch_to_transition, to_output=transition_to_batch)
    post = PolicyProcessorPipeline.from_pretrained(d, config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    return pre, post


def cmd_run(a):
    import diffusers.schedulers.scheduling_ddpm as sd

    p = _load(a.policy)
    pre, post = _processors(a.policy)
    obs = dict(np.load(a.obs))
    noise = dict(np.load(a.noise))
    state = {"k": -1, "i": 0}

    def fake_randn(shape, generator=None, device=None, dtype=None, **kw):
        z = noise[f"z_{state['k']}"][state["i"]]
        state["i"] += 1
        return torch.from_numpy(np.ascontiguousarray(z)).to(dtype or torch.float32).reshape(shape)

    sd.randn_tensor = fake_randn
    orig = p.diffusion.generate_actions

    draws = []

    def gen(batch, noise=None):
        if state["k"] >= 0:
            draws.append(state["i"])
        state["k"] += 1
        state["i"] = 0
        return orig(batch, noise=torch.from_numpy(noise_arr(state["k"])))

    def noise_arr(k):
        return np.ascontiguousarray(noise[f"x_T_{k}"]).astype(np.float32)

    p.diffusion.generate_actions = gen
    p.reset()
    T = next(iter(obs.values())).shape[0]
    acts = []
    with torch.no_grad():
        for i in range(T):
            o = pre({k: torch.from_numpy(v[i]) for k, v in obs.items()})
            acts.append(post(p.select_action(o)).numpy())
    draws.append(state["i"])
    # draws[k]: how many step noises chunk k consumed (99 for DDPM over T = 100: none at t = 0)
    np.savez(a.out, actions=np.stack(acts), draws=np.array(draws, dtype=np.int64))


def cmd_folder(a):
    """IN (config.json, model.safetensors, stats.npz written from a ddpm-export checkpoint) -> a
    LeRobot folder: LeRobot's DiffusionPolicy from that config.json, the weights loaded with
    strict=True, its processors made from the statistics, all saved as training saves them."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    src = Path(a.src)
    cfg = PreTrainedConfig.from_pretrained(src)
    cfg.device = "cpu"
    policy = DiffusionPolicy.from_pretrained(src, config=cfg, strict=True)
    stats = {}
    for key, v in np.load(src / "stats.npz").items():  # "feature.stat" -> {feature: {stat: array}}
        feat, stat = key.rsplit(".", 1)
        stats.setdefault(feat, {})[stat] = v
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats)
    out = Path(a.out)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    print(out)


def cmd_bench(a):
    """Seconds per chunk of LeRobot's eager select_action (with its pre/post processors) at one
    observation: reset() before every call, so every call predicts a chunk; the first is a warmup."""
    import time

    from lerobot.policies.diffusion.modeling_diffusion import _make_noise_scheduler

    torch.set_num_threads(a.threads)
    p = _load(a.policy)
    pre, post = _processors(a.policy)
    if a.scheduler:
        c = p.config
        p.diffusion.noise_scheduler = _make_noise_scheduler(
            a.scheduler, num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
            beta_schedule=c.beta_schedule, clip_sample=c.clip_sample, clip_sample_range=c.clip_sample_range,
            prediction_type=c.prediction_type)
        p.diffusion.num_inference_steps = a.steps or c.num_train_timesteps
    spent = {"encoder": 0.0, "denoiser": 0.0}

    def timed(name, fn):
        def run(*args, **kw):
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            spent[name] += time.perf_counter() - t0
            return out
        return run

    p.diffusion._prepare_global_conditioning = timed("encoder", p.diffusion._prepare_global_conditioning)
    p.diffusion.conditional_sample = timed("denoiser", p.diffusion.conditional_sample)
    obs = {k: torch.from_numpy(v) for k, v in np.load(a.obs).items()}
    rows = []
    with torch.no_grad():
        for _ in range(a.chunks + 1):
            p.reset()
            spent.update(encoder=0.0, denoiser=0.0)
            t0 = time.perf_counter()
            post(p.select_action(pre(dict(obs))))
            rows.append({"chunk_s": time.perf_counter() - t0, "encoder_s": spent["encoder"],
                         "denoiser_s": spent["denoiser"]})
    import lerobot

    Path(a.out).write_text(json.dumps({
        "rows": rows[1:], "warmup": rows[0], "scheduler": type(p.diffusion.noise_scheduler).__name__,
        "steps": int(p.diffusion.num_inference_steps), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "lerobot": getattr(lerobot, "__version__", "?")}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--kind", choices=("state", "image"), required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    m.add_argument("--scheduler", choices=("DDPM", "DDIM"), default="DDPM")
    m.add_argument("--steps", type=int, default=None)
    m.add_argument("--cameras", type=int, default=1)
    m.add_argument("--size", choices=("tiny", "pusht"), default="tiny",
                   help="pusht (image kind only): one 96x96 camera, crop 84, a 2-d state, down_dims (64, 128, 256)")
    c = sub.add_parser("chunk")
    c.add_argument("--policy", required=True)
    c.add_argument("--inputs", required=True)
    c.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--policy", required=True)
    r.add_argument("--obs", required=True)
    r.add_argument("--noise", required=True)
    r.add_argument("--out", required=True)
    f = sub.add_parser("folder")
    f.add_argument("--src", required=True)
    f.add_argument("--out", required=True)
    bn = sub.add_parser("bench")
    bn.add_argument("--policy", required=True)
    bn.add_argument("--obs", required=True)
    bn.add_argument("--out", required=True)
    bn.add_argument("--chunks", type=int, default=5)
    bn.add_argument("--scheduler", choices=("DDPM", "DDIM"), default=None)
    bn.add_argument("--steps", type=int, default=None)
    bn.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    {"make": cmd_make, "chunk": cmd_chunk, "run": cmd_run, "folder": cmd_folder, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    main()
