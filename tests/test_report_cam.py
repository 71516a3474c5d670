"""Fig 6 explains the model that made a run's predictions: never the per-slice network of a stack-context run."""
from __future__ import annotations

import json
import shutil

import pytest

from benchmark import report


@pytest.fixture()
def with_stack_run(results_small, tmp_path):
    """results_small plus vgg16_d0 and vgg16_d0+stack, a stack-context run on top of it (whose model.keras is
    vgg16_d0's per-slice network) that scores higher."""
    out = tmp_path / "results"
    shutil.copytree(results_small, out)
    for name, depth, extra in (("vgg16_d0", 0, {}),
                               ("vgg16_d0+stack", "0+stack", {"stack_model": {"base_run": "vgg16_d0"}})):
        run = out / name
        shutil.copytree(out / "mobilenetv2_d0", run)
        config = json.loads((run / "config.json").read_text())
        config.update(run=name, backbone="vgg16", backbone_name="VGG16", depth=depth, **extra)
        (run / "config.json").write_text(json.dumps(config))
    metrics = json.loads((out / "vgg16_d0" / "test_metrics.json").read_text())
    (out / "vgg16_d0" / "test_metrics.json").write_text(json.dumps({**metrics, "macro_f1": 0.9}))
    return report.load_results(out)


def test_the_gradcam_run_is_one_whose_network_made_its_predictions(with_stack_run):
    vgg = [r for r in with_stack_run.done if r.config["backbone"] == "vgg16"]
    assert with_stack_run.best(vgg).name == "vgg16_d0+stack"  # the better VGG16 run by its scores
    assert report.default_cam_run(with_stack_run).name == "vgg16_d0"
    with pytest.raises(report.FigureUnavailable) as err:  # --gradcam-run vgg16_d0+stack
        report.cam_grid(with_stack_run.get("vgg16_d0+stack"))
    assert str(err.value) == (
        "vgg16_d0+stack is a stack-context run: its predictions come from the stack model over whole stacks, not "
        "from the per-slice network its model.keras holds (run vgg16_d0); Grad-CAM of that network would explain "
        "another model than the run's (--gradcam-run names a per-slice run)")
