"""The results schema (layout.py), the metric directions and the user-error boundary, against hand-written values."""
import subprocess
import sys

import pytest

from benchmark import layout
from benchmark.errors import BenchmarkInputError, UnknownName, exit_on_user_error
from benchmark.metrics import higher_is_better
from benchmark.preprocess import Preprocessing
from benchmark.profiles import get_profile
from benchmark.registry import get_spec


def test_run_names_and_the_paper_order():
    assert layout.run_name("vgg16", 1) == "vgg16_d1"
    assert layout.run_name("cbr_tiny", 0) == "cbr_tiny"
    names = ["baseline_constant", "cbr_tiny", "mobilenet_d0+stack", "vgg16_d0", "mobilenet_d1", "mobilenet_d0", "zz"]
    assert sorted(names, key=layout.run_order) == ["mobilenet_d0", "mobilenet_d0+stack", "mobilenet_d1", "vgg16_d0",
                                                   "cbr_tiny", "zz", "baseline_constant"]
    assert layout.grid_pairs(["mobilenet", "cbr_small"], [0, 1]) == [("mobilenet", 0), ("mobilenet", 1),
                                                                    ("cbr_small", 0)]


def test_job_names_read_back_to_their_timed_step(tmp_path):
    assert layout.job_dir_name("cv", 0.001, 2) == "cv_lr0.001_f2"
    assert layout.job_dir_name("foldinit", fold=4) == "foldinit_f4"
    assert layout.job_step("cv_lr0.001_f2") == "cv" and layout.job_step("final") == "final"
    for job, seconds in (("cv_lr0.01_f0", 2.0), ("cv_lr0.01_f1", 3.0), ("final", 4.5)):
        (tmp_path / "jobs" / job).mkdir(parents=True)
        (tmp_path / "jobs" / job / layout.JOB_JSON).write_text(f'{{"seconds": {seconds}}}')
    t = layout.job_seconds(tmp_path)
    assert t["cv_s"] == 5.0 and t["final_s"] == 4.5 and t["feature_pass_s"] == 0.0 and t["total_s"] == 9.5
    assert set(layout.TIMED_PHASES) <= set(t)


def test_run_status(tmp_path):
    assert layout.run_status(tmp_path) == layout.STATUS_INCOMPLETE
    (tmp_path / layout.ERROR).write_text("boom")
    assert layout.run_status(tmp_path) == layout.STATUS_FAILED
    (tmp_path / layout.DONE).write_text("")
    assert layout.run_status(tmp_path) == layout.STATUS_DONE


def test_format_check_names_the_file_and_the_fix(tmp_path):
    layout.check_format(tmp_path / "config.json", {"results_format": layout.RESULTS_FORMAT}, fix="x")
    for record in ({"results_format": layout.RESULTS_FORMAT + 1}, {}, [1]):
        with pytest.raises(BenchmarkInputError, match=r"config.json: written in results format .*; this code writes 1 .* use another --out"):
            layout.check_format(tmp_path / "config.json", record, fix="use another --out")


@pytest.mark.parametrize("metric, higher", [("macro_f1", True), ("val_macro_f1", True), ("f1_oap", True),
                                            ("range_exact", True), ("r2", True), ("boundary_mae", False),
                                            ("val_mae", False), ("rmse", False), ("val_loss", False)])
def test_metric_directions(metric, higher):
    assert higher_is_better(metric) is higher


def test_an_unknown_metric_has_no_default_direction():
    with pytest.raises(ValueError, match="no direction known"):
        higher_is_better("mystery")


def test_preprocessing_round_trips_and_refuses_partial_records():
    p = Preprocessing(96, "caffe", window=(2.0, 98.0), input_kind="2.5d")
    assert Preprocessing.from_key(p.key()) == p and Preprocessing.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="missing field"):
        Preprocessing.from_dict({"input_size": 96, "mode": "caffe"})


def test_unknown_names_are_user_errors_with_the_valid_names(capsys):
    for lookup, valid in ((lambda: get_spec("vgg17"), "mobilenet"), (lambda: get_profile("fast"), "paper")):
        with pytest.raises(UnknownName) as info:
            lookup()
        assert valid in str(info.value) and not str(info.value).startswith("'")
    assert exit_on_user_error("prog", lambda: get_spec("vgg17")) == 2
    assert capsys.readouterr().err.startswith("prog: error: unknown backbone 'vgg17'")


def test_a_bug_keeps_its_traceback():
    """A KeyError that is not a user error is not turned into a one-line message with exit 2."""
    def bug() -> int:
        return {}["missing"]
    with pytest.raises(KeyError):
        exit_on_user_error("prog", bug)


def test_tables_import_no_tensorflow():
    code = ("import sys, benchmark.layout, benchmark.summary, benchmark.registry, benchmark.metrics; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_wall_time_merges_jobs_that_ran_at_once():
    # three fits in threads from t=0 to 10, 2 to 12 and 4 to 9, then a job from 20 to 25 and one without a span
    spans = [(0.0, 10.0, 10.0), (2.0, 12.0, 10.0), (4.0, 9.0, 5.0), (20.0, 25.0, 5.0), (None, None, 3.0)]
    assert layout.wall_seconds(spans) == 12.0 + 5.0 + 3.0
    assert layout.wall_seconds([]) == 0.0


def test_a_job_clock_records_seconds_and_its_span():
    rec = layout.JobClock().record(concurrent_fits=3)
    assert rec["concurrent_fits"] == 3 and rec["seconds"] >= 0 and rec["finished"] >= rec["started"]
