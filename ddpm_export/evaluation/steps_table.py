"""The quality/speed frontier: every sampling method against engine calls, through the runtime.

For each method, engine-call count and seed the engine draws the same number of
samples with the NumPy runtime; quality is the digits Frechet distance to held-out
real digits (next to the real-vs-real floor at the same count) in two independent
feature spaces (``frechet_to_real``: the MLP classifier's, ``frechet_conv``: the conv
net's, see ddpm_export.evaluation.digits) and the MLP classifier's confident-label share. Rows aggregate the seeds: mean and sample standard deviation
(the seed-to-seed spread). Every method here makes one engine call per step, so
"steps" and "engine calls" are the same number. Digits engines only (the feature
extractor is the digits classifier); other models: sample with ``sample-many`` and use ``fid``.

A class-conditional engine samples every run at the same labels (cycled over the samples:
every label 0..K-1 by default, so that the set stays comparable with the real digits) and
guidance scale (the manifest's default unless given); both are recorded in the result and
every run, and each run also gets the label accuracy: the share of samples the digits
classifier assigns to the requested label (10-class engines).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

DEFAULT_STEPS = (5, 10, 15, 20, 50, 100)


def _stats(v: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else 0.0)


def steps_table(engine_path: str, num: int = 450, steps: Sequence[int] = DEFAULT_STEPS,
                methods: Optional[Sequence[str]] = None, seeds: Sequence[int] = (0,),
                full_ddpm: bool = False, options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                done: Sequence[Mapping[str, Any]] = (), reference_samples: Optional[str] = None,
                progress: bool = False, allow_host_code: bool = False,
                log: Callable[[str], None] = lambda s: None,
                on_run: Callable[[Dict[str, Any]], None] = lambda r: None,
                labels: Optional[Sequence[int]] = None, guidance: Optional[float] = None) -> Dict[str, Any]:
    """Frechet/confident share/wall time per (method, steps), over ``seeds``.

    methods: names in runtime.schedulers.METHODS (None = all); options: per-method options
    (e.g. {"unipc": {"order": 3}}); full_ddpm adds DDPM over all T steps. ``done``: runs
    of an earlier call (same engine, num) to reuse instead of sampling again; ``on_run``
    gets the partial result after every new run (to save progress). allow_host_code: see
    runtime.load (version-compatible TensorRT plans).
    reference_samples: an .npz whose 'samples' [M, 1, 16, 16] are DDPM over all T steps of the
    same model (e.g. engines/digits_samples.npz, from the PyTorch reference sampler): adds the
    row "ddpm-reference" at T calls, scored on len(seeds) disjoint slices of ``num`` samples
    (independent noise, so they stand in for seeds) without sampling anything.
    labels / guidance: a class-conditional engine's labels (cycled over the samples; None: every
    label) and guidance scale (None: the manifest's default); an unconditional engine refuses them.
    """
    import runtime
    from runtime.schedulers import METHODS, make_scheduler, resolve_options

    from ddpm_export.evaluation.digits import DIGITS_SHAPE, train_digits_classifier

    methods = list(METHODS if methods is None else methods)
    options = dict(options or {})
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("steps_table needs at least one seed")
    plan: List[Tuple[str, int]] = []
    with runtime.load(engine_path, allow_host_code=allow_host_code) as engine:
        if tuple(engine.image_shape) != DIGITS_SHAPE:
            raise ValueError(f"{engine_path}: images {list(engine.image_shape)}; the steps table scores "
                             f"with the digits classifier and needs the digits model's {list(DIGITS_SHAPE)}")
        T = int(engine.manifest["schedule"]["num_timesteps"])
        cond, conditioning = _conditioning(engine_path, engine, num, labels, guidance)
        if conditioning and reference_samples is not None:
            raise ValueError(f"--reference-samples {reference_samples}: stored samples do not record the labels and "
                             f"guidance they were drawn at; a conditional engine's table samples every row itself")
        for r in done:  # resumed runs must have been drawn at this table's conditions
            if {k: r.get(k) for k in conditioning} != conditioning:
                raise ValueError(f"--resume: the stored run {r.get('method')}-{r.get('steps')} seed {r.get('seed')} was "
                                 f"drawn at {({k: r.get(k) for k in conditioning}) or 'no conditions'}, this table at "
                                 f"{conditioning or 'no conditions'}; resume with the same --label and --guidance")
        for method in methods:  # check every (method, steps) before sampling anything
            opts = resolve_options(method, options.get(method))
            for n in steps:
                make_scheduler(engine.manifest["schedule"], method, n, **options.get(method, {}))
                plan.append((method, int(n)))
            options[method] = {k: v for k, v in opts.items() if v is not None}
        if full_ddpm and ("ddpm", T) not in plan:
            plan.append(("ddpm", T))
            options.setdefault("ddpm", {})
        clf = train_digits_classifier()
        score = _Scorer(clf)
        key = lambda r: (r["method"], r["steps"], r["seed"])  # noqa: E731
        runs: Dict[Tuple[str, int, int], Dict[str, Any]] = {key(r): dict(r) for r in done}
        batch = min(num, engine.runner.max_batch)
        if conditioning and conditioning["guidance"] not in (0.0, 1.0) and engine.runner.max_batch >= 2:
            batch = min(num, engine.runner.max_batch // 2)  # both branches in one call at 2 x batch
        backend = engine.runner.backend

        def result() -> Dict[str, Any]:
            return {"engine": str(engine_path), "backend": backend, "num": num, "seeds": seeds,
                    "batch": batch, **score.floors,
                    "options": options, **conditioning, "runs": list(runs.values()),
                    "rows": _rows(plan, seeds, runs)}

        if reference_samples is not None:
            with np.load(reference_samples) as z:
                ref = np.asarray(z["samples"], dtype=np.float32)
            if len(ref) < num * len(seeds):
                raise ValueError(f"{reference_samples}: {len(ref)} samples, need {num} x {len(seeds)} "
                                 f"seeds = {num * len(seeds)} for disjoint slices; lower --samples")
            plan.append(("ddpm-reference", T))
            for j, seed in enumerate(seeds):
                runs[("ddpm-reference", T, seed)] = {
                    "method": "ddpm-reference", "steps": T, "seed": seed, "engine_calls": T,
                    "seconds": None, "slice": [j * num, (j + 1) * num], **score(ref[j * num:(j + 1) * num])}
        for (m, n, _s) in list(runs):  # rows of earlier calls (resume) stay in the table
            if (m, n) not in plan:
                plan.append((m, n))
        for method, n in plan:
            if method == "ddpm-reference":
                continue
            for seed in seeds:
                if (method, n, seed) in runs:
                    continue
                log(f"{method} {n} steps, seed {seed}: {num} samples")
                ckw = {} if not conditioning else {"cond": cond, "guidance": conditioning["guidance"], "batch": batch}
                res = engine.sample_float(num, seed=seed, method=method, steps=n, progress=progress,
                                          **options.get(method, {}), **ckw)
                row = runs[(method, n, seed)] = {
                    "method": method, "steps": n, "seed": seed, "engine_calls": n,
                    "seconds": res.seconds, **score(res.images)}
                if conditioning:
                    run = runs[(method, n, seed)]
                    run.update(conditioning)
                    run["network_calls"] = res.network_calls  # 2 branches per step in one call at 2N, or two calls
                    if conditioning.get("num_classes") == 10:
                        from ddpm_export.evaluation.digits import label_scores

                        run["label_accuracy"] = label_scores(clf, {"s": res.images}, cond[conditioning["condition"]]
                                                             )["sets"]["s"]["label_accuracy"]
                log(f"  Frechet {row['frechet_to_real']:.2f} (floor {score.floors['real_floor']:.2f}), conv "
                    f"{row['frechet_conv']:.2f} (floor {score.floors['real_floor_conv']:.2f}), {res.seconds:.1f} s"
                    + (f", label accuracy {runs[(method, n, seed)]['label_accuracy']:.3f}"
                       if "label_accuracy" in runs[(method, n, seed)] else ""))
                on_run(result())
        if not score.floors:  # everything reused: the floors at this count, without sampling
            score(clf.real_a[:num])
        return result()


class _Scorer:
    """A sample set's scores in both digits feature spaces, as a run's fields; keeps the
    real-vs-real floors at the set's count (``floors``: real_floor, real_floor_conv,
    real_reference_n, real_reference_n_conv)."""

    def __init__(self, clf):
        from ddpm_export.evaluation.digits import train_digits_conv

        self.clf, self.conv = clf, train_digits_conv()
        self.floors: Dict[str, Any] = {}

    def __call__(self, images: np.ndarray) -> Dict[str, Any]:
        from ddpm_export.evaluation.digits import FLOOR, digits_distribution

        d, dc = (digits_distribution(c, {"samples": images}) for c in (self.clf, self.conv))
        row = d["sets"]["samples"]
        self.floors = {"real_floor": d["sets"][FLOOR]["frechet_to_real"], "real_reference_n": d["real_reference_n"],
                       "real_floor_conv": dc["sets"][FLOOR]["frechet_to_real"],
                       "real_reference_n_conv": dc["real_reference_n"]}
        return {"frechet_to_real": row["frechet_to_real"], "frechet_conv": dc["sets"]["samples"]["frechet_to_real"],
                "confident_share": row["confident_share"], "class_min_share": row["class_min_share"]}


def _conditioning(engine_path, engine, num: int, labels, guidance):
    """(cond for sample_float, the table's conditioning record) of a steps-table run; ({}, {})
    for an unconditional engine. Every refusal before any sampling."""
    from runtime.contract import default_guidance
    from runtime.guidance import check_condition, check_guidance, null_conditions

    conds = engine.conditions
    if not conds:
        given = [f for f, v in (("--label", labels), ("--guidance", guidance)) if v is not None]
        if given:
            raise ValueError(f"{' and '.join(given)}: received for {engine_path}, an unconditional engine (it "
                             f"takes no conditions); omit {' and '.join(given)}")
        return {}, {}
    if len(conds) != 1 or conds[0].kind != "class_label":
        raise ValueError(f"{engine_path}: conditions {[(c.name, c.kind) for c in conds]}; the steps table samples "
                         f"unconditional or class-conditional engines (one class_label condition) only")
    c = conds[0]
    ids = list(range(c.num_classes)) if labels is None else [int(v) for v in labels]
    check_condition(c, np.asarray(ids, dtype=np.int64), len(ids))
    w = check_guidance(default_guidance(engine.manifest) if guidance is None else guidance)
    if w != 1.0:
        null_conditions(conds, 1)  # no null label: refused now, with how to fix it
    cond = {c.name: np.array([ids[i % len(ids)] for i in range(num)], dtype=np.int64)}
    return cond, {"condition": c.name, "labels": ids, "labels_cycled": True, "num_classes": c.num_classes,
                  "guidance": w}


def _rows(plan, seeds, runs) -> List[Dict[str, Any]]:
    from runtime.schedulers import METHODS

    order = {m: i for i, m in enumerate(METHODS)}
    rows = []
    for method, n in sorted(plan, key=lambda p: (order.get(p[0], len(order)), p[1])):
        got = [runs[(method, n, s)] for s in seeds if (method, n, s) in runs]
        if not got:
            continue
        f_mean, f_std = _stats([r["frechet_to_real"] for r in got])
        c_mean, c_std = _stats([r["confident_share"] for r in got])
        secs = [r["seconds"] for r in got if r["seconds"] is not None]
        s_mean = _stats(secs)[0] if secs else None
        conv = [r["frechet_conv"] for r in got if "frechet_conv" in r]  # runs stored before it: none
        cv_mean, cv_std = _stats(conv) if len(conv) == len(got) else (None, None)
        rows.append({"method": method, "steps": n, "engine_calls": n, "seeds": len(got),
                     "frechet_mean": f_mean, "frechet_std": f_std,
                     "frechet_per_seed": [r["frechet_to_real"] for r in got],
                     "frechet_conv_mean": cv_mean, "frechet_conv_std": cv_std,
                     "frechet_conv_per_seed": conv if cv_mean is not None else None,
                     "confident_mean": c_mean, "confident_std": c_std, "seconds_mean": s_mean})
        acc = [r["label_accuracy"] for r in got if "label_accuracy" in r]
        if acc:
            rows[-1]["label_accuracy_mean"], rows[-1]["label_accuracy_std"] = _stats(acc)
    return rows


def _cell(mean: Optional[float], std: Optional[float]) -> str:
    return "n/a" if mean is None else f"{mean:.2f} +- {std:.2f}"


def format_steps_table(r: Dict[str, Any]) -> str:
    floor, conv = r["real_floor"], r.get("real_floor_conv")
    lines = [f"{r['num']} samples per run, seeds {r['seeds']}, batch {r['batch']}, {r['backend']}; "
             f"Frechet distance to {r['real_reference_n']} held-out real digits, mean +- std over "
             f"seeds, in two feature spaces: mlp (real-vs-real floor {floor:.2f}) and conv "
             f"(floor {'n/a' if conv is None else format(conv, '.2f')}; its own held-out digits)",
             "| method | engine calls | Frechet (mlp) | Frechet (conv) | confident share | wall time (s) |",
             "|---|---|---|---|---|---|"]
    acc = any("label_accuracy_mean" in row for row in r["rows"])
    if "guidance" in r:
        lines[0] += (f"; {r['condition']} {r['labels']} cycled over the samples, guidance {r['guidance']:g} "
                     f"(steps = denoiser evaluations; with guidance each is two network branches)")
        if acc:
            lines[1:] = ["| method | steps | Frechet (mlp) | Frechet (conv) | confident share | label accuracy "
                         "| wall time (s) |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        a = (f"{row['label_accuracy_mean']:.3f} +- {row['label_accuracy_std']:.3f} | "
             if "label_accuracy_mean" in row else "")
        lines.append(f"| {row['method']} | {row['engine_calls']} | {_cell(row['frechet_mean'], row['frechet_std'])} | "
                     f"{_cell(row.get('frechet_conv_mean'), row.get('frechet_conv_std'))} | {row['confident_mean']:.3f} | {a}"
                     f"{'n/a' if row['seconds_mean'] is None else format(row['seconds_mean'], '.1f')} |")
    return "\n".join(lines)


def paired_differences(r: Dict[str, Any], against: Tuple[str, int],
                       key: str = "frechet_to_real") -> List[Dict[str, Any]]:
    """Per (method, calls): the Frechet difference to the ``against`` row seed by seed
    (``key``: a run's field, "frechet_to_real" for the MLP space, "frechet_conv" for the conv one).

    Every method starts its chains from the same x_T for a given seed (and the noise-drawing
    methods draw their first noise from the same per-image streams), so much of the
    seed-to-seed spread is shared between rows: a paired difference removes it. Returns rows
    {method, engine_calls, seeds, diff_mean, diff_std, diff_per_seed}; only seeds present in
    both rows count. ``against`` = (method, engine calls), e.g. ("ddpm", 1000).
    """
    base = {x["seed"]: x[key] for x in r["runs"] if (x["method"], x["steps"]) == tuple(against) and key in x}
    if not base:
        have = sorted({(x["method"], x["steps"]) for x in r["runs"]})
        raise ValueError(f"no runs of {against[0]} at {against[1]} engine calls with {key} to pair with; "
                         f"the table has {have}")
    out = []
    for row in r["rows"]:
        if (row["method"], row["engine_calls"]) == tuple(against):
            continue
        d = [x[key] - base[x["seed"]] for x in r["runs"]
             if (x["method"], x["steps"]) == (row["method"], row["engine_calls"]) and x["seed"] in base and key in x]
        if not d:
            continue
        m, s = _stats(d)
        out.append({"method": row["method"], "engine_calls": row["engine_calls"], "seeds": len(d),
                    "diff_mean": m, "diff_std": s, "diff_per_seed": d})
    return out


def format_paired(rows: List[Dict[str, Any]], against: Tuple[str, int], space: str = "mlp") -> str:
    lines = [f"Frechet ({space}) minus {against[0]}-{against[1]}'s at the same seed: mean +- std over seeds, and per seed",
             "| method | engine calls | difference | per seed |", "|---|---|---|---|"]
    for p in rows:
        lines.append(f"| {p['method']} | {p['engine_calls']} | {p['diff_mean']:+.2f} +- {p['diff_std']:.2f} | "
                     + ", ".join(f"{v:+.2f}" for v in p["diff_per_seed"]) + " |")
    return "\n".join(lines)
