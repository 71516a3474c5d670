"""`python -m benchmark.perf`: the same CV work on the per-epoch path and on the cached path, timed side by side.

Default work: MobileNet α0.25 (quick-profile input size) on the synthetic default, 5 folds x 1 LR x 10 epochs, at
depth 0 and at depth 1, with the quick profile's augmentation (rotation, oversampling, bank of views). Prints one line
per comparison, e.g.

    depth0 mobilenet: per-epoch 812.3 s, cached 31.0 s, ratio 26.2x, feature pass alone 27.9 s

"cached" includes building the cache (the feature pass) and every fit; "feature pass alone" is the one-pass
extraction over the bank, the floor the cached path approaches, and "fits" the rest (tracing the compiled training
step included). Both paths build the network before their clock starts (the same ~1 s either way). Depth 1 starts
every fold from the same depth-0 fold models in both paths (built once beforehand, not timed), so only the depth-1
fits differ.
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
    args = p.parse_args(argv)

    from .grid import make_experiment, synthetic_default
    from .profiles import get_profile
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
                if depth == 1:  # the depth-0 fold models both paths start from, built once and shared
                    shared = work / "d0_shared"
                    base = make_experiment(data, prof.with_overrides(lr_depth0=(prof.lr_depth0[0],)), 0, shared,
                                           args.weights, use_cache=True, cache_dir=work / "cache_shared")
                    d0 = ModelRun(base, spec, 0)
                    for k in range(args.folds):
                        d0.fold_head(k)
                    (out / d0.name).parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(shared / d0.name, out / d0.name)
                run = ModelRun(exp, spec, depth)
                run.model  # noqa: B018 (built, with its weights, before the clock starts: the same in both paths)
                t0 = time.perf_counter()
                for k in range(args.folds):
                    run.cv_job(lr, k)
                timings["cached" if use_cache else "per_epoch"] = time.perf_counter() - t0
                if use_cache:
                    timings["feature_pass"] = run.timing.get("feature_pass_s", float("nan"))
                    timings["bytes_per_view"] = run.timing.get("cache_bytes_per_view")
                    timings["views"] = len(exp.cache_views(run.profile.bank_views))
            ratio = timings["per_epoch"] / timings["cached"]
            floor = timings["cached"] / timings["feature_pass"]
            print(f"depth{depth} {spec.key}: per-epoch {timings['per_epoch']:.1f} s, cached {timings['cached']:.1f} s, "
                  f"ratio {ratio:.1f}x, feature pass alone {timings['feature_pass']:.1f} s "
                  f"(cached = {floor:.2f}x the feature pass, fits {timings['cached'] - timings['feature_pass']:.1f} s; "
                  f"{timings['views']} views of {timings['bytes_per_view']} bytes cached; {args.folds} folds x 1 LR "
                  f"({lr:g}) x {args.epochs} epochs, input {prof.input_size(spec)} px)", flush=True)
            results[f"depth{depth}"] = {**timings, "ratio": ratio, "cached_over_feature_pass": floor, "lr": lr,
                                        "epochs": args.epochs, "folds": args.folds,
                                        "input_size": prof.input_size(spec)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
