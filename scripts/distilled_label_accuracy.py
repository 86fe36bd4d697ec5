"""Label accuracy of class-conditional digits engines (a distilled student next to its
teacher) by guidance scale and sampler, over several seeds, with the project's digits
classifier (as scripts/guidance_table.py scores them; docs/distillation.md).

    .venv/bin/python scripts/distilled_label_accuracy.py \
        --engine student=runs/digits-cond-distilled/student.onnx:consistency:4 \
        --engine teacher=engines/digits-cond.onnx:unipc:4 \
        --engine teacher=engines/digits-cond.onnx:unipc:10 \
        --guidance 1 2 --seeds 0 1 2 --per-class 40

For every (engine, method, calls, w, seed): ``per-class`` samples of each label (labels
cycled 0..9), the share the classifier assigns to the requested label, and the per-class
Frechet distance of the classifier's features to the held-out real digits of that class
(mean over the 10 classes). Prints the mean and the spread (max - min) over seeds.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", action="append", required=True, help="NAME=PATH.onnx:METHOD:CALLS (repeat)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    specs = []
    for e in args.engine:
        try:
            name, rest = e.split("=", 1)
            path, method, calls = rest.rsplit(":", 2)
            specs.append((name, path, method, int(calls)))
        except ValueError:
            p.error(f"--engine {e!r}: expected NAME=PATH.onnx:METHOD:CALLS, e.g. student=s.onnx:consistency:4")

    clf = train_digits_classifier()
    yb = clf.y_test[len(clf.real_a):]
    ref = {c: clf.features(clf.real_b[yb == c]) for c in range(NUM_CLASSES)}
    labels = np.arange(args.per_class * NUM_CLASSES) % NUM_CLASSES
    rows = []
    for name, path, method, calls in specs:
        with runtime.load(path) as eng:
            for w in args.guidance:
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    res = eng.sample_float(len(labels), seed=seed, method=method, steps=calls,
                                           cond={"class_labels": labels}, guidance=w)
                    pred = clf.proba(res.images).argmax(axis=1)
                    feats = clf.features(res.images)
                    fd = float(np.mean([frechet_distance(feats[labels == c], ref[c]) for c in range(NUM_CLASSES)]))
                    row = {"engine": name, "path": path, "method": method, "calls": calls, "guidance": w,
                           "seed": seed, "label_accuracy": float((pred == labels).mean()), "per_class_frechet": fd,
                           "network_calls": int(res.network_calls), "seconds": round(time.perf_counter() - t0, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| engine | sampler | w | label accuracy (mean, spread) | per-class Frechet (mean, spread) |"
          "\n|---|---|---|---|---|")
    for name, path, method, calls in specs:
        for w in args.guidance:
            sel = [r for r in rows if (r["engine"], r["path"], r["method"], r["calls"], r["guidance"])
                   == (name, path, method, calls, w)]
            acc, fd = [r["label_accuracy"] for r in sel], [r["per_class_frechet"] for r in sel]
            print(f"| {name} | {method}-{calls} | {w:g} | {np.mean(acc):.3f} ({max(acc) - min(acc):.3f}) | "
                  f"{np.mean(fd):.2f} ({max(fd) - min(fd):.2f}) |")
    print(f"(classifier test accuracy {clf.test_accuracy:.3f}; {len(labels)} samples per seed)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"per_class": args.per_class, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
