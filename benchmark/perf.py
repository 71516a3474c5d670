"""`python -m benchmark.perf`: the same CV work on the per-epoch path and on the cached path, timed side by side.

Default work: MobileNet α0.25 (quick-profile input size) on the synthetic default, 5 folds x 1 LR x 10 epochs, at
depth 0 and at depth 1, with the quick profile's augmentation (rotation, oversampling, bank of views). Prints one line
per comparison, e.g.

    depth0 mobilenet: per-epoch 812.3 s, cached 31.0 s, ratio 26.2x, feature pass alone 27.9 s

"cached" includes building the cache (the feature pass) and every fit; "feature pass alone" is the one-pass
extraction over the bank, the floor the cached path approaches, and "fits" the rest (tracing the compiled training
step included). Both paths build the network before their clock starts (the same ~1 s either way). Depth 1 starts
every fold from the same depth-0 fold models in both paths (built once beforehand, not timed), so only the depth-1
fits differ. Fits run as under the default (in-process) executor: the cached depth-0 fits several at a time in
threads (`fits.parallel_fits`), all others one at a time.

`--feature-pass` instead times the depth-0 feature pass alone at each precision and batch size (`--precisions`,
`--batches`), on whatever device the Keras backend runs on, for choosing `infer.FEATURE_PASS`. Per setting it prints
the network's throughput on batches already in memory (after one compiling call) and the end-to-end feature pass
over the bank (`cache.cached_outputs`: image making, compiling and writing included), plus how far the features
move from float32 (relative L2 error of the pooled features). It needs no TensorFlow (any Keras backend), e.g.
`KERAS_BACKEND=jax python -m benchmark.perf --feature-pass --input-size 224 --profile paper`. With `--runs` it also
runs the backbone's whole depth-0 protocol once per precision and prints the selections and test metrics side by
side, so a precision is chosen only where it leaves the selection within the fold-to-fold SD.

`--plan` predicts the wall time of a whole grid on this machine (benchmark.plan), e.g.
`python -m benchmark.perf --plan --profile paper --data DIR --backbone all --depth both --workers 2`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="dataset directory (default: the synthetic default)")
    p.add_argument("--backbone", default="mobilenet", help="backbone key (default mobilenet)")
    p.add_argument("--depth", choices=["0", "1", "both"], default="both")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--lr", type=float, default=None, help="the one learning rate (default: the profile grid's "
                                                          "second value)")
    p.add_argument("--profile", default="quick")
    p.add_argument("--weights", default="auto")
    p.add_argument("--input-size", type=int, help="override the profile's input size for this backbone")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--feature-pass", action="store_true",
                   help="instead, time the depth-0 feature pass alone for each precision and batch size: the "
                        "network's images/s, the whole pass over the bank, the features' drift from float32")
    p.add_argument("--precisions", help="comma-separated Keras dtype policies for --feature-pass (default: float32 "
                                        "and this device's default)")
    p.add_argument("--batches", default="64,512", help="comma-separated batch sizes for --feature-pass")
    p.add_argument("--max-views", type=int, help="--feature-pass: use at most this many views of the bank")
    p.add_argument("--runs", action="store_true",
                   help="--feature-pass: also run the whole depth-0 protocol of the backbone once per precision (on "
                        "--data, split by --test-fraction) and print the selections and test metrics side by side")
    p.add_argument("--plan", action="store_true",
                   help="instead, predict the wall time of every model of a grid (--backbone KEY[,KEY...]|all, "
                        "--depth) on this machine from short timed slices of each job kind (benchmark.plan)")
    p.add_argument("--workers", type=int, default=1, help="--plan: models run side by side (python -m benchmark "
                                                           "--workers N)")
    p.add_argument("--test-fraction", type=float, help="--plan: as for python -m benchmark (default: the manifest's "
                                                        "split column, else the profile's)")
    args = p.parse_args(argv)
    from .errors import exit_on_user_error
    from .tf_quiet import quiet_tensorflow

    def run() -> int:
        quiet_tensorflow()
        return (feature_pass_sweep if args.feature_pass else plan_command if args.plan else compare_paths)(args)
    return exit_on_user_error("benchmark perf", run)


def compare_paths(args: argparse.Namespace) -> int:
    """The default: the per-epoch and the cached path on the same CV work, one line per depth."""
    from .data import synthetic_default
    from .grid import make_experiment
    from .profiles import get_profile
    from .fits import cv_pairs, load_head, parallel_fits
    from .layout import job_dir_name
    from .protocol import ModelRun
    from .registry import get_spec

    profile = get_profile(args.profile)
    sizes = dict(profile.input_sizes)
    if args.input_size:
        sizes[args.backbone] = args.input_size
    spec = get_spec(args.backbone)
    depths = {"0": [0], "1": [1], "both": [0, 1]}[args.depth]
    results = {}
    with tempfile.TemporaryDirectory(prefix="perf-") as tmp:
        data = args.data or synthetic_default(profile.synthetic_patients)
        work = Path(tmp)
        for depth in depths:
            lr = args.lr or profile.lrs(depth, spec.pretrained)[min(1, len(profile.lrs(depth, True)) - 1)]
            prof = profile.with_overrides(epochs=args.epochs, n_folds=args.folds, input_sizes=sizes,
                                          lr_depth0=(lr,) if depth == 0 else None,
                                          lr_depth1=(lr,) if depth == 1 else None)
            timings = {}
            for use_cache in (False, True):
                out = work / f"d{depth}_{'cached' if use_cache else 'plain'}"
                exp = make_experiment(data, prof, 0, out, args.weights, use_cache=use_cache,
                                      cache_dir=work / f"cache_{depth}_{use_cache}")
                starts = {}
                if depth == 1:  # the depth-0 fold models both paths start from, built once and shared
                    shared = work / "d0_shared"
                    base = make_experiment(data, prof.with_overrides(lr_depth0=(prof.lr_depth0[0],)), 0, shared,
                                           args.weights, use_cache=True, cache_dir=work / "cache_shared")
                    d0 = ModelRun(base, spec, 0)
                    for lr0, k in cv_pairs(d0.spec):
                        d0.cv_job(lr0, k)
                    d0.selection()
                    for k in range(args.folds):
                        d0.foldinit(k)
                        starts[k] = load_head(d0.spec.job_dir(job_dir_name("foldinit", fold=k)))
                # as under the default (in-process) executor
                threads = parallel_fits(exp, spec, depth, fit_threads=True)
                run = ModelRun(exp, spec, depth)
                run.network()  # built, with its weights, before the clock starts: the same in both paths
                t0 = time.perf_counter()
                if threads > 1:
                    run.cv_sweep(threads)
                else:
                    for k in range(args.folds):
                        run.cv_job(lr, k, start=starts.get(k))
                timings["cached" if use_cache else "per_epoch"] = time.perf_counter() - t0
                if use_cache:
                    timings["feature_pass"] = run.fit_inputs().cache_cost.get("feature_pass_s", float("nan"))
                    timings["bytes_per_view"] = run.fit_inputs().cache_cost.get("cache_bytes_per_view")
                    timings["views"] = len(exp.cache_views(run.spec.profile.bank_views))
                    timings["concurrent_fits"] = threads
            ratio = timings["per_epoch"] / timings["cached"]
            floor = timings["cached"] / timings["feature_pass"]
            print(f"depth{depth} {spec.key}: per-epoch {timings['per_epoch']:.1f} s, cached {timings['cached']:.1f} s, "
                  f"ratio {ratio:.1f}x, feature pass alone {timings['feature_pass']:.1f} s "
                  f"(cached = {floor:.2f}x the feature pass, fits {timings['cached'] - timings['feature_pass']:.1f} s; "
                  f"{timings['views']} views of {timings['bytes_per_view']} bytes cached, {timings['concurrent_fits']} "
                  f"fit(s) at a time; {args.folds} folds x 1 LR "
                  f"({lr:g}) x {args.epochs} epochs, input {prof.input_size(spec)} px)", flush=True)
            results[f"depth{depth}"] = {**timings, "ratio": ratio, "cached_over_feature_pass": floor, "lr": lr,
                                        "epochs": args.epochs, "folds": args.folds,
                                        "input_size": prof.input_size(spec)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def plan_command(args: argparse.Namespace) -> int:
    """--plan: one line per model as it is measured, then the predicted table and the grid's total."""
    from .data import synthetic_default
    from .grid import make_experiment, plan
    from .plan import PHASES, grid_wall, plan_grid
    from .profiles import get_profile

    profile = get_profile(args.profile)
    if args.input_size:
        profile = profile.with_overrides(input_sizes={**profile.input_sizes, args.backbone: args.input_size})
    pairs = plan([b.strip() for b in args.backbone.split(",") if b.strip()], args.depth)
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # each timed model traces its own functions: TensorFlow's retracing notes
    with tempfile.TemporaryDirectory(prefix="perf-plan-") as tmp:
        exp = make_experiment(args.data or synthetic_default(profile.synthetic_patients), profile, 0, Path(tmp),
                              args.weights, use_cache=True, test_fraction=args.test_fraction)
        print(f"plan: {len(pairs)} model(s), profile {profile.name}, {len(exp.pool)} training and "
              f"{len(exp.test_set()[1])} test slices; timing a slice of each job kind per model", flush=True)
        rows = plan_grid(exp, pairs, progress=lambda r: print(
            f"  {r['run']}: measured in {r['measured_in_s']:.0f} s, predicted {_hms(r['wall_s'])}", flush=True))
    head = ["run", *PHASES, "machine_s", "wall_s"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join([r["run"], *(f"{r[k]:.0f}" for k in head[1:])]) + " |")
    low, high = grid_wall(rows, 1)
    print(f"grid: predicted {_hms(low)} wall on this machine with 1 worker")
    if args.workers > 1:
        low, high = grid_wall(rows, args.workers)
        print(f"grid with --workers {args.workers}: between {_hms(low)} and {_hms(high)} (see benchmark.plan)")
    if args.json:
        args.json.write_text(json.dumps({"profile": profile.name, "models": rows}, indent=2))
    return 0


def _hms(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def feature_pass_sweep(args: argparse.Namespace) -> int:
    import keras
    import numpy as np

    from .cache import bank_views, cached_outputs, depth0_start, split_model
    from .data import (
        Augmentation,
        Dataset,
        oversample_factors,
        prefetch_workers,
        prefetched,
        synthetic_default,
    )
    from .infer import (
        PRECISIONS,
        FeaturePass,
        device_kind,
        feature_pass,
        in_precision,
        inference,
    )
    from .preprocess import Preprocessing
    from .profiles import get_profile
    from .registry import choose_weights, get_spec
    from .models import build_model

    profile = get_profile(args.profile)
    spec = get_spec(args.backbone)
    if not spec.pretrained:
        raise SystemExit(f"--feature-pass needs a pretrained backbone; {spec.key} has no frozen part")
    size = args.input_size or profile.input_size(spec)
    precisions = (args.precisions.split(",") if args.precisions
                  else list(dict.fromkeys(["float32", feature_pass(cpu_bf16=spec.cpu_bf16).precision])))
    bad = [x for x in precisions if x not in PRECISIONS]
    if bad:
        raise SystemExit(f"--precisions: {bad} not in {', '.join(PRECISIONS)}")
    batches = sorted(int(b) for b in args.batches.split(","))
    ds = Dataset.load(args.data or synthetic_default(profile.synthetic_patients))
    rows = np.arange(len(ds.rows))
    factors = oversample_factors(ds.rows.y.to_numpy(), len(ds.classes), profile.oversample)
    views = bank_views(ds, rows, factors, profile.bank_views, augment=profile.rotation_deg > 0)
    if args.max_views and len(views) > args.max_views:
        views = type(views)(views.rows[:args.max_views], views.copies[:args.max_views], views.draws[:args.max_views])
    weights_desc, weights = choose_weights(spec, args.weights, size)
    model = build_model(spec, size, len(ds.classes), weights=weights)
    prefix = split_model(model, depth0_start(model))[0]
    prep = Preprocessing(size, spec.preprocess_mode)
    angles = views.angles(0, profile.rotation_deg)
    n_mem = min(len(views), max(batches))
    images = ds.make_inputs(views.rows[:n_mem], prep, angles[:n_mem])
    where = f"{device_kind()} ({keras.backend.backend()} backend)"
    print(f"feature pass {spec.key} at {size} px, weights {weights_desc}: {len(views)} views, on {where}", flush=True)
    reference: dict[int, np.ndarray] = {}
    results = []
    with tempfile.TemporaryDirectory(prefix="perf-fp-") as tmp:
        for precision in sorted(precisions, key=lambda x: x != "float32"):  # float32 first: the reference
            for bs in batches:
                batch = images[:bs]
                net = inference(in_precision(prefix, precision))
                first = np.asarray(net(batch))  # compiles
                ref = reference.setdefault(bs, first) if precision == "float32" else reference.get(bs)
                drift = float(np.linalg.norm(first - ref) / np.linalg.norm(ref)) if ref is not None else float("nan")
                reps = max(3, -(-len(views) // bs))
                t0 = time.perf_counter()
                for _ in range(reps):
                    last = net(batch)
                np.asarray(last)
                network = reps * len(batch) / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                cached_outputs(prefix, ds, prep, views, cache_dir=Path(tmp), key=f"{precision}-{bs}", seed=0,
                               augmentation=Augmentation(profile.rotation_deg, profile.intensity_gamma),
                               run=FeaturePass(precision, bs))
                end_to_end = time.perf_counter() - t0
                print(f"  {precision:<15} batch {bs:>4}: network {network:8.0f} img/s, end-to-end "
                      f"{len(views) / end_to_end:8.0f} img/s ({end_to_end:.1f} s with compiling and image making), "
                      f"features off float32 by {100 * drift:.2f} % (relative L2)", flush=True)
                results.append({"precision": precision, "batch_size": bs, "network_img_s": network,
                                "end_to_end_s": end_to_end, "views": len(views), "drift_vs_float32": drift})

    def make(sl: slice) -> np.ndarray:
        return ds.make_inputs(views.rows[sl], prep, angles[sl])

    make_rate = {w: n_mem / _timed(lambda w=w: list(prefetched(n_mem, 32, make, workers=w)))
                 for w in sorted({1, prefetch_workers()})}
    print("  image making alone: " + ", ".join(f"{r:.0f} img/s with {w} thread{'s' * (w > 1)}"
                                                 for w, r in make_rate.items()), flush=True)
    runs = precision_runs(args, spec, profile, precisions) if args.runs else None
    if args.json:
        args.json.write_text(json.dumps({"device": where, "backbone": spec.key, "input_size": size,
                                         "weights": weights_desc, "image_making_img_s_by_threads": make_rate,
                                         "settings": results, "runs": runs}, indent=2))
    return 0


RUN_METRICS = ("macro_f1", "accuracy", "auc_micro")


def precision_runs(args: argparse.Namespace, spec, profile, precisions: list[str]) -> dict[str, dict]:
    """The depth-0 protocol of `spec` once per feature precision, on the same data, split, folds and seeds: what
    the selection (LR, epochs, fold mean and SD of its metric) and the test metrics become at each precision."""
    from data_prep import atomic

    from .data import synthetic_default
    from .grid import make_experiment, run_grid
    from .layout import SELECTION, TEST_METRICS, run_name

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="perf-runs-") as tmp:
        for precision in precisions:
            prof = profile.with_overrides(feature_precision=precision, stack_model=False)
            exp = make_experiment(args.data or synthetic_default(profile.synthetic_patients), prof, 0,
                                  Path(tmp) / precision, args.weights, use_cache=True,
                                  test_fraction=args.test_fraction)
            t0 = time.perf_counter()
            run_grid(exp, [(spec.key, 0)])
            run_dir = exp.out / run_name(spec.key, 0)
            sel, m = atomic.read_json(run_dir / SELECTION), atomic.read_json(run_dir / TEST_METRICS)
            out[precision] = {"seconds": time.perf_counter() - t0, "metric": sel["metric"], "lr": sel["lr"],
                              "epochs": sel["epochs"],
                              "cv_mean": sel["cv_mean"], "cv_sd": sel["cv_sd"],
                              **{k: m.get(k) for k in RUN_METRICS},
                              "range_exact": m.get("decoded", {}).get("range_exact")}
    print("  the depth-0 run at each precision (same data, split, folds and seeds):")
    for precision, r in out.items():
        print(f"  {precision:<15} selected LR {r['lr']:g} at {r['epochs']} epochs, CV {r['metric']} "
              f"{r['cv_mean']:.3f} ± {r['cv_sd']:.3f} (fold SD); test " +
              ", ".join(f"{k} {r[k]:.3f}" for k in (*RUN_METRICS, "range_exact") if r[k] is not None) +
              f"; {r['seconds']:.0f} s", flush=True)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
