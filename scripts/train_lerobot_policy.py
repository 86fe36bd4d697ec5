"""Train LeRobot's own DiffusionPolicy (its model, its loss ``policy.forward(batch)``) on the
obstacle task's expert demonstrations, state-only, on one CPU core; save a LeRobot
``pretrained_model`` folder (policy + pre/post processors with the dataset stats).

Run with the LeRobot venv (it imports ddpm_export.tasks, pure NumPy, for the demos):

    cd /work/wt-task && PYTHONPATH=/work/wt-task OMP_NUM_THREADS=1 nohup \
      /work/main/.venv-lerobot/bin/python scripts/train_lerobot_policy.py \
      --out /work/runs/obstacle-policy --episodes 1000 --steps 25000 \
      > /work/runs/obstacle-policy/train.log 2>&1 &

Training windows are built as LeRobot's dataset builds them: observations at t-1..t
(n_obs_steps 2, the first frame copied at the episode start), actions t-1 .. t-1+horizon-1 (the
last action copied at the episode end, ``action_is_pad`` marking the copies). AdamW lr 1e-4 with
a linear warmup + cosine decay (LeRobot's preset). ``OUT/train_state.pt`` is written every
``--checkpoint-every`` seconds and at the end (weights, optimizer, lr schedule, RNG states,
step): a rerun of the same command resumes exactly. ``OUT/pretrained_model/`` is written at each
checkpoint too. ``--eval N`` rolls out LeRobot's own select_action (with its processors, DDIM-10)
on N episodes at the end and writes ``OUT/eval.json``; on any saved folder:

    PYTHONPATH=/work/wt-task OMP_NUM_THREADS=1 /work/main/.venv-lerobot/bin/python \
      scripts/train_lerobot_policy.py --out /tmp/x --eval-only /work/runs/obstacle-policy/pretrained_model --eval 200
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

from ddpm_export.tasks.obstacle import ACTION_DIM, ENV_DIM, STATE_DIM, ObstacleTask, demonstrations

OBS = ("observation.state", "observation.environment_state")


def build_windows(episodes, n_obs_steps: int, horizon: int):
    obs = {k: [] for k in OBS}
    act, pad = [], []
    for ep in episodes:
        T = len(ep["action"])
        for t in range(T):
            oi = np.clip(np.arange(t - n_obs_steps + 1, t + 1), 0, T - 1)
            ai = np.arange(t - n_obs_steps + 1, t - n_obs_steps + 1 + horizon)
            is_pad = (ai < 0) | (ai > T - 1)
            for k in OBS:
                obs[k].append(ep[k][oi])
            act.append(ep["action"][np.clip(ai, 0, T - 1)])
            pad.append(is_pad)
    out = {k: np.stack(v).astype(np.float32) for k, v in obs.items()}
    out["action"] = np.stack(act).astype(np.float32)
    out["action_is_pad"] = np.stack(pad)
    return out


def dataset_stats(episodes):
    stats = {}
    for k in OBS + ("action",):
        x = np.concatenate([ep[k] for ep in episodes]).astype(np.float32)
        stats[k] = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
                    "count": np.array([len(x)])}
    return stats


def min_max(x, s, eps=1e-8):
    d = s["max"] - s["min"]
    d = np.where(d == 0, eps, d)
    return (2 * (x - s["min"]) / d - 1).astype(np.float32)


def make_config(args):
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    return DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (ENV_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        normalization_mapping={"VISUAL": NormalizationMode.MEAN_STD, "STATE": NormalizationMode.MIN_MAX,
                               "ENV": NormalizationMode.MIN_MAX, "ACTION": NormalizationMode.MIN_MAX},
        n_obs_steps=2, horizon=16, n_action_steps=8, down_dims=tuple(args.down_dims),
        diffusion_step_embed_dim=args.embed_dim, device="cpu", push_to_hub=False,
        optimizer_lr=args.lr, scheduler_warmup_steps=args.warmup)


def save_folder(policy, cfg, stats, d):
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    tstats = {k: {n: torch.as_tensor(v) for n, v in s.items()} for k, s in stats.items()}
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=tstats)
    os.makedirs(d, exist_ok=True)
    policy.save_pretrained(d)
    pre.save_pretrained(d)
    post.save_pretrained(d)


def closed_loop(d, episodes, seed, steps=10, max_steps=80):
    """LeRobot's own select_action with its processors on the task, DDIM-``steps``."""
    from diffusers import DDIMScheduler
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import (batch_to_transition, policy_action_to_transition,
                                              transition_to_batch, transition_to_policy_action)

    policy = DiffusionPolicy.from_pretrained(d).eval()
    cfg = policy.config
    policy.diffusion.noise_scheduler = DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule, clip_sample=cfg.clip_sample, clip_sample_range=cfg.clip_sample_range,
        prediction_type=cfg.prediction_type)
    policy.diffusion.num_inference_steps = steps
    # (lerobot.policies.factory.make_pre_post_processors does the same but imports gymnasium)
    pre = PolicyProcessorPipeline.from_pretrained(d, config_filename="policy_preprocessor.json",
                                                  to_transition=batch_to_transition, to_output=transition_to_batch)
    post = PolicyProcessorPipeline.from_pretrained(d, config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    torch.manual_seed(seed)
    task = ObstacleTask(episodes, seed=seed, max_steps=max_steps)
    obs = task.reset()
    policy.reset()
    t0 = time.time()
    with torch.no_grad():
        while not task.done.all():
            batch = pre({k: torch.from_numpy(v) for k, v in obs.items()})
            a = post(policy.select_action(batch)).numpy()
            obs = task.step(np.where(task.done[:, None], task.pos, a))
    ok = task.success
    up = int((task.mode[ok] == 1).sum()); n = int(ok.sum())
    return {"success_rate": float(ok.mean()), "collision_rate": float(task.collided.mean()),
            "mode_balance": (min(up, n - up) / n) if n else 0.0, "episodes": episodes, "seed": seed,
            "method": f"ddim-{steps} (lerobot select_action)", "wall_s": time.time() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--demo-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--down-dims", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=float, default=180.0, help="seconds")
    p.add_argument("--stop-after", type=int, default=None, help="stop (as if killed) after this step")
    p.add_argument("--eval", type=int, default=50, help="closed-loop episodes at the end (0: none)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-only", metavar="DIR", default=None,
                   help="only run the closed-loop check on a pretrained_model DIR (--eval episodes, --eval-seed)")
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--eval-steps", type=int, default=10, help="DDIM steps of the closed-loop check")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.eval_only:
        res = closed_loop(args.eval_only, args.eval, seed=args.eval_seed, steps=args.eval_steps)
        print(json.dumps(res), flush=True)
        return res
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    os.makedirs(args.out, exist_ok=True)
    eps = demonstrations(args.episodes, seed=args.demo_seed)
    data = build_windows(eps, 2, 16)
    stats = dataset_stats(eps)
    for k in OBS + ("action",):
        data[k] = min_max(data[k], stats[k])
    tdata = {k: torch.from_numpy(v) for k, v in data.items()}
    N = len(data["action"])
    cfg = make_config(args)
    torch.manual_seed(args.seed)
    policy = DiffusionPolicy(cfg)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=cfg.optimizer_betas, eps=cfg.optimizer_eps,
                            weight_decay=cfg.optimizer_weight_decay)

    def lr_lambda(step):
        if step < args.warmup:
            return step / max(1, args.warmup)
        prog = (step - args.warmup) / max(1, args.steps - args.warmup)
        return max(0.0, 0.5 * (1 + math.cos(math.pi * prog)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    state_path = os.path.join(args.out, "train_state.pt")
    if os.path.exists(state_path):
        st = torch.load(state_path, weights_only=False)
        policy.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"]); torch.set_rng_state(st["torch_rng"]); step = st["step"]
        print(f"resumed at step {step}", flush=True)

    def checkpoint():
        tmp = state_path + ".tmp"
        torch.save({"model": policy.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                    "args": vars(args)}, tmp)
        os.replace(tmp, state_path)
        save_folder(policy, cfg, stats, os.path.join(args.out, "pretrained_model"))

    print(f"{args.episodes} demos, {N} windows, {sum(p.numel() for p in policy.parameters())} parameters, "
          f"{args.steps} steps", flush=True)
    last_ck, t0, run = time.time(), time.time(), 0.0
    losses = []
    while step < args.steps:
        idx = torch.randint(0, N, (args.batch,), generator=gen)
        batch = {k: v[idx] for k, v in tdata.items()}
        loss, _ = policy.forward(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        opt.step(); sched.step(); step += 1
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            sys.exit(f"loss is {losses[-1]} at step {step}")
        if step % args.log_every == 0 or step == args.steps:
            el = time.time() - t0
            print(f"step {step}/{args.steps} loss {np.mean(losses[-args.log_every:]):.5f} "
                  f"lr {sched.get_last_lr()[0]:.2e} {el / 60:.1f} min", flush=True)
        if time.time() - last_ck > args.checkpoint_every:
            checkpoint(); last_ck = time.time()
        if args.stop_after is not None and step >= args.stop_after:
            checkpoint()
            print(f"stopped at step {step}", flush=True)
            return {"step": step, "losses": losses}
    checkpoint()
    print("saved", os.path.join(args.out, "pretrained_model"), flush=True)
    if args.eval:
        res = closed_loop(os.path.join(args.out, "pretrained_model"), args.eval, seed=args.eval_seed,
                          steps=args.eval_steps)
        with open(os.path.join(args.out, "eval.json"), "w") as f:
            json.dump(res, f, indent=1)
        print("closed loop:", json.dumps(res), flush=True)
    return {"step": step, "losses": losses}


if __name__ == "__main__":
    main()
