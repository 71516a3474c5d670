"""The feature pass's precision per backbone and CPU, and the planner's arithmetic, on hand-made inputs."""
from __future__ import annotations

import pytest

from benchmark import cpus, infer, plan
from benchmark.registry import BACKBONES


@pytest.mark.parametrize("flags, expected", [("fpu sse avx512f avx512_bf16 avx512_vnni", True),
                                             ("fpu sse amx_bf16 amx_tile", True),
                                             ("fpu sse avx2 avx512f", False)])
def test_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    real = cpus.Path
    monkeypatch.setattr(cpus, "Path", lambda p: info if p == "/proc/cpuinfo" else real(p))
    cpus.has_bf16.cache_clear()
    try:
        assert cpus.has_bf16() is expected
    finally:
        cpus.has_bf16.cache_clear()


@pytest.mark.parametrize("device, bf16, cpu_bf16, expected", [
    ("cpu", True, True, "mixed_bfloat16"),   # a backbone measured faster in bfloat16, on a CPU that has it
    ("cpu", False, True, "float32"),         # no native bfloat16 arithmetic
    ("cpu", True, False, "float32"),         # depthwise convolutions: measured slower
    ("gpu", True, True, "mixed_float16"),    # GPUs keep their own default
])
def test_the_feature_precision_follows_the_device_the_cpu_and_the_backbone(monkeypatch, device, bf16, cpu_bf16,
                                                                           expected):
    monkeypatch.setattr(infer, "device_kind", lambda: device)
    monkeypatch.setattr(infer, "has_bf16", lambda: bf16)
    assert infer.feature_pass(cpu_bf16=cpu_bf16).precision == expected
    assert infer.feature_pass("float32", cpu_bf16=cpu_bf16).precision == "float32"  # a profile's choice wins


def test_the_mobile_networks_keep_float32():
    """Measured slower or no faster in bfloat16 (registry.BackboneSpec.cpu_bf16); the large networks gain 1.4-1.9x."""
    chosen = {k for k, s in BACKBONES.items() if s.cpu_bf16}
    assert not chosen & {"mobilenet", "mobilenetv2", "nasnetmobile"} and {"vgg16", "densenet121"} <= chosen
    assert not any(BACKBONES[k].cpu_bf16 for k in ("cbr_large_t", "cbr_small", "cbr_tiny"))  # nothing is frozen


WORK = plan.Workload(views=1000, fold_slots=(300, 500), fold_val=(50, 40), pool_slots=800, test_rows=60, n_lrs=3,
                     epochs=10, batch_size=100, cv_threads=1)
RATES = plan.Rates(feature_img_s=50.0, make_img_s=200.0, feature_compile_s=4.0, step_s=0.5, predict_row_s=0.01,
                   fit_compile_s=2.0)


def test_predicted_phases_by_hand():
    s = plan.predict_seconds(WORK, RATES, depth=0, pretrained=True, with_depth1=True)
    assert s["feature_pass_s"] == pytest.approx(4.0 + 1000 / 50)           # the network is slower than image making
    fold0, fold1 = 10 * (3 * 0.5 + 50 * 0.01), 10 * (5 * 0.5 + 40 * 0.01)  # epochs x (steps + validation)
    assert s["cv_s"] == pytest.approx(3 * (fold0 + fold1) + 2.0)
    assert s["foldinit_s"] == pytest.approx(10 * (3 + 5) * 0.5)
    assert s["final_s"] == pytest.approx(10 * 8 * 0.5)
    assert s["test_s"] == pytest.approx(60 * 0.01)
    assert s["machine_s"] == pytest.approx(sum(s[k] for k in plan.PHASES)) == s["wall_s"]
    assert plan.predict_seconds(WORK, RATES, depth=0, pretrained=True, with_depth1=False)["foldinit_s"] == 0


def test_a_threaded_sweep_counts_its_cv_at_wall_time(monkeypatch):
    monkeypatch.setattr(plan, "usable_cpus", lambda: 2)
    threaded = plan.Workload(**{**WORK.__dict__, "cv_threads": 3})
    s = plan.predict_seconds(threaded, RATES, depth=0, pretrained=True, with_depth1=False)
    assert s["wall_s"] == pytest.approx(s["machine_s"] - s["cv_s"] / 2)  # 3 threads on 2 cores: at most 2x


def test_grid_wall_bounds(monkeypatch):
    monkeypatch.setattr(plan, "usable_cpus", lambda: 2)
    rows = [{"wall_s": 100.0}, {"wall_s": 50.0}]
    assert plan.grid_wall(rows, 1) == (150.0, 150.0)
    assert plan.grid_wall(rows, 4) == (75.0, 150.0)


@pytest.mark.slow
def test_the_planner_counts_what_the_run_does_and_times_every_job_kind(tiny_synthetic, tmp_path):
    from benchmark.grid import make_experiment
    from benchmark.profiles import get_profile

    profile = get_profile("quick").with_overrides(epochs=3, n_folds=2, input_sizes={"mobilenet": 32, "cbr_tiny": 16})
    exp = make_experiment(tiny_synthetic, profile, 0, tmp_path / "out", "none", use_cache=True, test_fraction=0.25)
    rows = plan.plan_grid(exp, [("mobilenet", 0), ("mobilenet", 1), ("cbr_tiny", 0)])
    assert [r["run"] for r in rows] == ["mobilenet_d0", "mobilenet_d1", "cbr_tiny"]
    d0, d1, cbr = rows
    assert d0["workload"]["views"] == len(exp.cache_views(profile.bank_views))
    assert d0["workload"]["fold_val"] == tuple(len(va) for _, va in exp.folds)
    assert d0["workload"]["test_rows"] == len(exp.test_set()[1])
    assert d0["foldinit_s"] > 0 and d1["foldinit_s"] == 0 == cbr["foldinit_s"]  # depth 1 starts from d0's folds
    assert cbr["rates"]["feature_img_s"] == 0  # a CBR net caches preprocessed images: no frozen prefix
    for r in rows:
        assert r["rates"]["step_s"] > 0 and r["cv_s"] > 0 and r["machine_s"] >= r["wall_s"] > 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # the planner trains nothing


@pytest.mark.slow
def test_the_plan_command_runs_on_a_real_network_at_mixed_precision(tmp_path, monkeypatch, capsys):
    """`perf --plan` end to end. At a mixed precision the feature pass runs a copy of the frozen prefix that only its
    compiled forward holds (on a GPU by default): that forward must keep its network alive."""
    from benchmark import perf
    from data_prep import synthetic
    data = synthetic.generate(tmp_path / "syn6", patients=6, seed=0)
    monkeypatch.setitem(infer.FEATURE_PASS, "cpu", infer.FeaturePass("mixed_bfloat16", 16))
    assert perf.main(["--plan", "--profile", "quick", "--backbone", "mobilenet", "--depth", "0", "--weights", "none",
                      "--data", str(data), "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| mobilenet_d0 |"))
    assert all(float(x) >= 0 for x in row.strip("| ").split(" | ")[1:])
    assert "grid: predicted" in out


def test_a_compiled_forward_keeps_its_network_alive():
    import gc

    import keras
    import numpy as np
    inp = keras.Input((4, 4, 3))
    forward = infer.inference(keras.Model(inp, keras.layers.Dense(2)(inp)))  # nothing else holds the model
    gc.collect()
    assert np.asarray(forward(np.zeros((3, 4, 4, 3), np.float32))).shape == (3, 4, 4, 2)
