"""Label accuracy and per-class Frechet distance of a class-conditional digits engine, by
guidance scale and sampler, over several seeds (issue 25's table; docs/conditional.md).

    .venv/bin/python scripts/guidance_table.py --engine engines/digits-cond.onnx \
        --seeds 0 1 2 --guidance 0 1 2 4 --method unipc:10 --method ddpm:1000 \
        --per-class 40 --json reports/guidance-table.json

For every (method, w, seed): ``per-class`` samples of each of the 10 labels (labels cycled
0..9 over the samples), then, with the project's digits classifier
(ddpm_export.evaluation.digits, trained on one half of the sklearn digits):
- label accuracy: the share of samples the classifier assigns to the requested label;
- per-class Frechet: for each class, the Frechet distance between the classifier's features
  of that class's samples and of the held-out real digits of that class, averaged over the
  10 classes. Real-vs-real at the same count per class (real_a vs real_b of the class) is
  the floor: what the count alone gives.
Seeds change x_T and the noise; the mean and the spread (max - min) over seeds are printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime  # noqa: E402
from ddpm_export.evaluation.digits import frechet_distance, train_digits_classifier  # noqa: E402

NUM_CLASSES = 10


def per_class_frechet(clf, feats: np.ndarray, labels: np.ndarray, ref: dict) -> float:
    return float(np.mean([frechet_distance(feats[labels == c], ref[c]) for c in range(NUM_CLASSES)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="engines/digits-cond.onnx")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--method", action="append", default=None,
                   help="METHOD:STEPS (repeat); default unipc:10 and ddpm:1000")
    p.add_argument("--per-class", type=int, default=40, help="samples per label per seed (default 40)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write every row to this JSON file")
    args = p.parse_args(argv)
    methods = [(m.split(":")[0], int(m.split(":")[1])) for m in (args.method or ["unipc:10", "ddpm:1000"])]

    clf = train_digits_classifier()
    x_real = np.concatenate([clf.real_a, clf.real_b])
    y_real = clf.y_test
    half = len(clf.real_a)
    ya, yb = y_real[:half], y_real[half:]
    n = args.per_class
    ref = {c: clf.features(clf.real_b[yb == c]) for c in range(NUM_CLASSES)}
    fa = clf.features(clf.real_a)
    short = min(min(int((ya == c).sum()), int((yb == c).sum())) for c in range(NUM_CLASSES))
    n_floor = min(n, short)
    floor = float(np.mean([frechet_distance(fa[ya == c][:n_floor], ref[c]) for c in range(NUM_CLASSES)]))
    print(f"classifier test accuracy {clf.test_accuracy:.3f}; per-class real-vs-real floor at n={n_floor} "
          f"per class: {floor:.2f} (real_b per class: {min(len(r) for r in ref.values())}-"
          f"{max(len(r) for r in ref.values())} digits)", flush=True)
    del x_real
    labels = np.arange(n * NUM_CLASSES) % NUM_CLASSES
    rows = []
    with runtime.load(args.engine, threads=args.threads) as eng:
        for method, steps in methods:
            for w in args.guidance:
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    res = eng.sample_float(len(labels), seed=seed, method=method, steps=steps,
                                           cond={"class_labels": labels}, guidance=w, progress=True)
                    images = res.images
                    pred = clf.proba(images).argmax(axis=1)
                    feats = clf.features(images)
                    row = {"method": method, "steps": steps, "guidance": w, "seed": seed,
                           "label_accuracy": float((pred == labels).mean()),
                           "per_class_frechet": per_class_frechet(clf, feats, labels, ref),
                           "samples": int(len(labels)), "engine_calls": int(res.network_calls),
                           "seconds": round(time.perf_counter() - t0, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n| method | w | label accuracy (mean, spread) | per-class Frechet (mean, spread) |"
          f"\n|---|---|---|---|")
    for method, steps in methods:
        for w in args.guidance:
            sel = [r for r in rows if r["method"] == method and r["steps"] == steps and r["guidance"] == w]
            acc = [r["label_accuracy"] for r in sel]
            fd = [r["per_class_frechet"] for r in sel]
            print(f"| {method}-{steps} | {w:g} | {np.mean(acc):.3f} ({max(acc) - min(acc):.3f}) | "
                  f"{np.mean(fd):.2f} ({max(fd) - min(fd):.2f}) |")
    print(f"| real digits (floor, n={n_floor} per class) | | {clf.test_accuracy:.3f} (classifier) | {floor:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"engine": args.engine, "per_class": n, "floor": floor,
                                               "floor_n_per_class": n_floor,
                                               "classifier_test_accuracy": clf.test_accuracy,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
