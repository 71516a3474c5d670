"""`python -m benchmark`: run the paper's protocol for one backbone, a list, or all 21 models."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ chatter hides our own progress lines


def build_parser() -> argparse.ArgumentParser:
    from .profiles import PROFILES
    from .catalog import BACKBONE_KEYS
    p = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="Transfer-learning benchmark for cardiac short-axis slice classification (Ho & Kim 2021 "
                    "protocol): patient-grouped 5-fold CV over a learning-rate grid, automatic selection of LR and "
                    "epochs, a final fit on all training patients, and a patient-held-out test. Results go to "
                    "OUT/<backbone>_d<depth>/ and OUT/summary.csv.",
        epilog="Profiles: " + "; ".join(f"{k}: {v.description}" for k, v in PROFILES.items())
               + " Subcommands (each with --help): predict, report, perf, weights, export.")
    p.add_argument("--backbone", default="mobilenet",
                   help=f"one of {', '.join(BACKBONE_KEYS)}, a comma-separated list, or 'all' (9 backbones at the "
                        "requested depths + 3 CBR baselines = 21 models with --depth both). Default: mobilenet")
    p.add_argument("--depth", choices=["0", "1", "both"], default="both",
                   help="0: frozen backbone, head only; 1: last convolutional block fine-tuned (starts from the "
                        "depth-0 model); both (default). CBR baselines always train from scratch.")
    p.add_argument("--data", type=dataset_dirs, metavar="DIR[,DIR...]",
                   help="dataset directory made by `python -m data_prep`, or several separated by commas (e.g. ACDC "
                        "and the phantom: one experiment over all, patients prefixed with their directory's name, "
                        "splits stratified and test metrics reported per source); default: the embedded synthetic "
                        "phantom (generated once and cached)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--test-data", type=dataset_dirs, metavar="DIR[,DIR...]",
                   help="separate dataset directory (or several, comma-separated) used only for testing")
    g.add_argument("--test-fraction", type=float,
                   help="fraction of patients held out for testing (patient-level, class-stratified); default: "
                        "the manifest's split column if it has test rows, else the profile's test_fraction")
    p.add_argument("--profile", default="quick", help=f"protocol profile: {', '.join(PROFILES)} (default quick)")
    p.add_argument("--weights", help="imagenet (Keras cache, $KERAS_HOME/models), none (random init), auto "
                                     "(imagenet where the file is present, else none) or a PATH to a no-top .h5 "
                                     "file; default: the profile's (paper: imagenet, quick: auto). imagenet "
                                     "downloads a missing file as Keras does (`python -m benchmark weights` lists "
                                     "them)")
    p.add_argument("--offline", action="store_true",
                   help="never download ImageNet weights (as CARDIAC_BENCH_OFFLINE=1): a missing file stops the run "
                        "with its URL and where to put it")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, folds, augmentation and initialisation")
    p.add_argument("--out", type=Path, default=Path("results/run"), help="results directory (default results/run)")
    p.add_argument("--cache-dir", type=Path, help="where cached features live (default OUT/cache)")
    p.add_argument("--no-cache", action="store_true",
                   help="run the exact per-epoch path: the backbone sees every image in every epoch with a fresh "
                        "rotation, instead of training on cached features of a finite augmentation bank")
    p.add_argument("--task", choices=["classification", "regression", "multi"], default="classification",
                   help="classification (default): the slice classes; regression: the numeric manifest column "
                        "--target (MSE on the target standardised by the training pool, model selection by "
                        "validation MAE, no oversampling); multi: one backbone with both heads trained at once "
                        "(cross-entropy + standardised MSE, selection by validation macro-F1)")
    p.add_argument("--target", metavar="COLUMN",
                   help="the manifest column to regress with --task regression|multi, e.g. lv_cavity_px")
    p.add_argument("--head", choices=["classify", "segment", "both", "auto"],
                   help="classify: the per-slice classifiers (Dense(256)-Dropout head) and their stack models; "
                        "segment: a U-Net-style decoder on each backbone trained on the masks (LV cavity and "
                        "myocardium, Dice + cross-entropy), the IN range read from the predicted areas across the "
                        "stack (run <backbone>_d<depth>+seg); both; auto: both where the training data has masks and "
                        "OAP/IN/OBS stacks, else classify. Default: the profile's (paper: auto, quick: classify)")
    p.add_argument("--input", choices=["2d", "2.5d"], default="2d",
                   help="2d: the slice in all three channels (the paper); 2.5d: apex-side neighbour, slice, base-side "
                        "neighbour as the three channels (stack ends repeat the slice)")
    p.add_argument("--intensity-aug", type=float, metavar="G",
                   help="contrast augmentation of training views, on top of the rotation: each view's windowed "
                        "intensities through 255 (x / 255)^g with log g uniform in ±G (e.g. 0.4: g in 0.67..1.49); "
                        "default: the profile's intensity_gamma (0, off)")
    p.add_argument("--epochs", type=int, help="override the profile's epoch counts (the classifiers' and the "
                                              "segmentation head's)")
    p.add_argument("--folds", type=int, help="override the profile's number of CV folds")
    p.add_argument("--input-size", type=int, metavar="PX",
                   help="override the profile's input sizes: every network at PX x PX (at least its architecture's "
                        "minimum, e.g. 75 for InceptionV3)")
    p.add_argument("--force", action="store_true", help="redo runs that already finished in OUT")
    p.add_argument("--train-fraction", type=fractions_list, metavar="F[,F...]",
                   help="label-efficiency curve: train on these fractions of the training patients (e.g. "
                        "0.1,0.25,0.5,1.0), each a seeded, class-stratified patient subset nested inside the larger "
                        "ones, tested on the same held-out patients; results in OUT/frac<F>/rep<R>/ and "
                        "OUT/label_efficiency.csv. Default: the whole training pool, as usual")
    p.add_argument("--repeats", type=int, default=1,
                   help="subsets drawn per fraction with --train-fraction, repeat R seeded by (--seed, R) (default 1)")
    v = p.add_mutually_exclusive_group()
    v.add_argument("-q", "--quiet", action="store_true",
                   help="console: warnings and errors only (OUT/benchmark.log still gets every line)")
    v.add_argument("-v", "--verbose", action="store_true", help="console: also debugging detail")
    x = p.add_argument_group("executing the job graph (CV fits, selection, fold models, final fit, test)")
    x.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local (default): this machine; ray: Ray tasks on a local instance or the cluster at "
                        "--address (pip install '.[ray]'; OUT, --data and the cache must be on storage every node "
                        "sees)")
    x.add_argument("--workers", type=int, default=1,
                   help="jobs at once: 1 (default) runs them in this process in order; N > 1 uses N worker "
                        "processes (local) or caps the jobs in flight (ray). Results do not depend on it")
    x.add_argument("--address", help="Ray cluster address (e.g. 10.0.0.5:6379 after `ray start --head` there); "
                                     "default: start a private local instance")
    return p


def check_weights_file(path: str, option: str | None) -> None:
    """A weights file Keras would load at model build: an HDF5 file with layer weights. Checked up front, so a wrong
    file stops the grid before any data is read, not each model's first job (which would be retried)."""
    import h5py

    from .errors import BenchmarkInputError
    where = f"--weights {option}" if option not in (None, "imagenet", "auto") else path
    try:
        with h5py.File(path, "r") as f:
            has_layers = "layer_names" in f.attrs or "model_weights" in f or "layers" in f
    except OSError as exc:
        raise BenchmarkInputError(f"{where}: not a readable HDF5 (.h5) weights file ({exc})") from None
    if not has_layers:
        raise BenchmarkInputError(f"{where}: an HDF5 file without Keras layer weights (no layer_names, "
                                  f"model_weights or layers); give a no-top .h5 weights file")


def check_cache_dir(path: Path) -> None:
    """--cache-dir must be, or be creatable as, a directory this process can write in (the feature pass would fail
    on it only after the data was read, and every job after it)."""
    import tempfile

    from .errors import BenchmarkInputError
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    which = "it" if existing == path else existing
    if not existing.is_dir():
        raise BenchmarkInputError(f"--cache-dir {path}: {which} is a file, not a directory")
    try:  # a probe rather than os.access, which a read-only file system, ACLs and root all answer wrongly
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise BenchmarkInputError(f"--cache-dir {path}: {which} is not writable ({exc.strerror})") from None


def dataset_dirs(text: str) -> list[Path]:
    """One or more comma-separated dataset directories."""
    paths = [Path(p.strip()) for p in text.split(",") if p.strip()]
    if not paths:
        raise argparse.ArgumentTypeError(f"no dataset directory in {text!r}")
    return paths


def fractions_list(text: str) -> list[float]:
    """Comma-separated fractions, ascending and distinct (range checked with the data, by data.nested_subsets)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one fraction")
    return sorted(set(values))


SUBCOMMANDS = ("predict", "report", "perf", "weights", "export")  # modules of this package with main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBCOMMANDS:  # e.g. `python -m benchmark predict ...`: a trained model on a new study
        import importlib
        return importlib.import_module(f".{argv[0]}", __package__).main(argv[1:])
    args = build_parser().parse_args(argv)
    from .log import close_files, setup
    setup(args.verbose - args.quiet)
    if args.offline:  # the environment, so that worker processes see it too
        from .weights import OFFLINE_ENV
        os.environ[OFFLINE_ENV] = "1"
    from .errors import USER_ERRORS
    from .tf_quiet import quiet_tensorflow
    try:
        quiet_tensorflow()  # before the registry brings TensorFlow in
        return _run(args)
    except USER_ERRORS as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM while jobs run (jobs.Interrupted)
        import shlex
        import signal
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"benchmark: {exc if str(exc) else 'stopped by ' + signal.Signals(signum).name}; finished jobs are "
              f"kept, and the same command resumes: python -m benchmark {shlex.join(argv)}", file=sys.stderr)
        return 128 + signum
    finally:
        close_files()


def _run(args: argparse.Namespace) -> int:
    from .data import synthetic_default
    from .errors import BenchmarkInputError
    from .grid import make_experiment, plan, run_grid
    from data_prep.lock import exclusive

    from .layout import FINISHED, LOCK, check_writable
    from .jobs import make_executor, run_names
    from .profiles import get_profile
    from .registry import choose_weights, get_spec
    profile = get_profile(args.profile).with_overrides(epochs=args.epochs, segment_epochs=args.epochs,
                                                      n_folds=args.folds, intensity_gamma=args.intensity_aug)
    if profile.epochs < 1 or profile.n_folds < 2:
        raise BenchmarkInputError("--epochs must be >= 1 and --folds >= 2")
    if args.input_size is not None:
        if not 16 <= args.input_size <= 1024:
            raise BenchmarkInputError(f"--input-size must be between 16 and 1024 px, got {args.input_size}")
        from .registry import BACKBONES
        profile = profile.with_overrides(input_sizes={k: args.input_size for k in BACKBONES})
    if not 0 <= profile.intensity_gamma <= 2:  # beyond log g = 2 (g ~ 7.4) an image is nearly black or white
        raise BenchmarkInputError(f"--intensity-aug must be between 0 and 2, got {profile.intensity_gamma:g}")
    if not 0 <= args.seed < 2**32:  # numpy and TensorFlow take seeds of 32 bits
        raise BenchmarkInputError(f"--seed must be between 0 and {2**32 - 1}, got {args.seed}")
    if args.train_fraction and args.head in ("segment", "both"):
        raise BenchmarkInputError(f"--head {args.head} with --train-fraction: label-efficiency curves are drawn for "
                                  f"the classification heads only; use --head classify")
    if args.repeats < 1 or (args.repeats > 1 and not args.train_fraction):
        raise BenchmarkInputError("--repeats must be >= 1, and more than 1 only with --train-fraction")
    if (args.target is None) != (args.task == "classification"):
        raise BenchmarkInputError(f"--task {args.task} needs --target COLUMN (a numeric manifest column, e.g. "
                                  f"lv_cavity_px)" if args.target is None else
                                  f"--target {args.target} is for --task regression or multi, not {args.task}")
    backbones = [b.strip() for b in args.backbone.split(",") if b.strip()]
    if not backbones:
        raise BenchmarkInputError(f"--backbone {args.backbone!r} names no backbone; give one, a comma-separated "
                                  f"list, or 'all'")
    pairs = plan(backbones, args.depth)
    weights_files = set()
    for key, _ in pairs:  # a missing weights file stops everything before any data is read or work is done
        spec = get_spec(key)
        _, path = choose_weights(spec, args.weights or profile.weights, profile.for_backbone(spec).input_size(spec))
        weights_files.add(path)
    for path in sorted(weights_files - {None}):
        check_weights_file(path, args.weights)
    check_writable(args.out)
    if args.cache_dir is not None:
        check_cache_dir(args.cache_dir)
    data = args.data or synthetic_default(profile.synthetic_patients)
    import keras
    # No tf.config.experimental.enable_op_determinism(): it forbids the XLA-compiled depth-1 step (MaxPoolGrad has
    # no deterministic XLA kernel), and on the CPU the kernels we use are deterministic already; the tests check
    # that a killed-and-resumed run reproduces an uninterrupted one byte for byte.
    keras.utils.set_random_seed(args.seed)
    with exclusive(args.out / LOCK, "--out", args.out), make_executor(args.executor, args.workers,
                                                                      args.address) as executor:
        if args.train_fraction:
            return _label_efficiency(args, profile, pairs, data, executor)
        exp = make_experiment(data, profile, args.seed, args.out, args.weights or profile.weights,
                              use_cache=profile.cache and not args.no_cache, test_data=args.test_data,
                              test_fraction=args.test_fraction, cache_dir=args.cache_dir, input_kind=args.input,
                              task=args.task, target=args.target, head=args.head)
        log = _log_to(args.out)  # every input checked: the run starts
        summary = run_grid(exp, pairs, force=args.force, executor=executor)
    log.info(f"summary: {args.out / 'summary.csv'}")
    if summary.empty:
        return 0
    # the summary lists every run in OUT, also those of earlier commands with other models
    mine = summary["run"].isin(run_names(exp, pairs))
    return 1 if (mine & ~summary["status"].isin(FINISHED)).any() else 0


def _label_efficiency(args: argparse.Namespace, profile, pairs, data: Path, executor) -> int:
    from .grid import make_label_experiments, run_grid, write_label_efficiency
    from .layout import FINISHED
    subsets = make_label_experiments(data, profile, args.seed, args.out, args.weights or profile.weights,
                                     use_cache=profile.cache and not args.no_cache, fractions=args.train_fraction,
                                     repeats=args.repeats, test_data=args.test_data,
                                     test_fraction=args.test_fraction, cache_dir=args.cache_dir,
                                     input_kind=args.input, task=args.task, target=args.target)
    log = _log_to(args.out)
    for i, s in enumerate(subsets, 1):
        log.info(f"== fraction {s.fraction:g}, repeat {s.repeat} ({len(s.exp.data_desc['subset_patients'])} "
                 f"training patients) [{i}/{len(subsets)}]")
        run_grid(s.exp, pairs, force=args.force, executor=executor)
    df = write_label_efficiency(args.out, subsets)
    log.info(f"label efficiency: {args.out / 'label_efficiency.csv'}, {args.out / 'label_efficiency_summary.md'}")
    return 1 if df.empty or (~df["status"].isin(FINISHED)).any() else 0


def _log_to(out: Path):
    from .log import get, log_to
    log = get("run")
    log.debug(f"logging to {log_to(out)}")
    return log


if __name__ == "__main__":
    sys.exit(main())
