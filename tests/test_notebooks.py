"""The notebooks run top to bottom (nbclient, python3 kernel); a cell that raises fails the test. The figures a
notebook displays are checked for what they show (panels, titles, labels, the numbers drawn, image sizes and ranges)
against the result files, so a notebook that draws the wrong run, learning rate or matrix fails here, not only one
that raises. The committed results fixture has no model weights, so there the t-SNE and Grad-CAM notebooks print why
they skip those figures; the Grad-CAM notebook also runs on regenerated models (conftest.results_with_model).

One kernel serves all notebooks (importing TensorFlow takes several seconds per kernel); its namespace is reset
before each notebook, so a notebook that relied on another's variables would fail here."""
from __future__ import annotations

import ast
import base64
import io
import pickle
from pathlib import Path

import matplotlib.image
import nbformat
import numpy as np
import pytest
from jupyter_client.manager import KernelManager
from matplotlib.figure import Figure
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from benchmark import report

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# what the notebooks' first cells read from the environment: each run sets all of them, so that one notebook's
# settings (in the shared kernel's os.environ) never reach the next
SETTINGS = ("RESULTS", "N_BOOT", "DATA", "RUN", "SMOOTH_SAMPLES")


@pytest.fixture(scope="module")
def kernel():
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(NOTEBOOKS))
    yield km
    km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def results(results_small) -> report.Results:
    return report.load_results(results_small)


def settings(results_dir: Path, **more: str) -> dict[str, str]:
    return {"RESULTS": str(results_dir), "N_BOOT": "20", **more}


def run(nb: nbformat.NotebookNode, km: KernelManager, env: dict[str, str] | None = None,
        figures_to: Path | None = None) -> nbformat.NotebookNode:
    """Execute `nb` in a fresh namespace with exactly the settings `env`; with `figures_to`, pickle the figures the
    notebook displayed (IPython's Out, in cell order) to that file."""
    env = env or {}
    prelude = ['get_ipython().run_line_magic("reset", "-f")', "import os as _os", f"_os.environ.update({env!r})",
               *(f"_os.environ.pop({k!r}, None)" for k in SETTINGS if k not in env), "del _os"]
    nb.cells.insert(0, nbformat.v4.new_code_cell("\n".join(prelude)))
    if figures_to is not None:
        nb.cells.append(nbformat.v4.new_code_cell(
            "import pickle as _pickle\nfrom matplotlib.figure import Figure as _Figure\n"
            f"with open({str(figures_to)!r}, 'wb') as _f:\n"
            "    _pickle.dump([v for _, v in sorted(Out.items()) if isinstance(v, _Figure)], _f)"))
    NotebookClient(nb, km=km, timeout=180, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def execute(name: str, km: KernelManager, env: dict[str, str],
            tmp_path: Path) -> tuple[nbformat.NotebookNode, list[Figure]]:
    """The executed notebook and the figures it displayed."""
    path = tmp_path / f"{name}.figures.pickle"
    nb = run(nbformat.read(NOTEBOOKS / name, as_version=4), km, env, figures_to=path)
    with open(path, "rb") as f:
        return nb, pickle.load(f)


def outputs(nb, kind: str) -> list[str]:
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "image" and "image/png" in out.get("data", {}):
                found.append(out["data"]["image/png"])
            elif kind == "text":
                found.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return found


def pngs(nb) -> list[np.ndarray]:
    """The displayed images, decoded; each must show something (not one flat colour)."""
    images = [matplotlib.image.imread(io.BytesIO(base64.b64decode(png)), format="png") for png in outputs(nb, "image")]
    for image in images:
        assert image.ndim == 3 and min(image.shape[:2]) > 100 and image[..., :3].std() > 0.05
    return images


def panels(fig: Figure) -> list:
    """The titled axes, in drawing order (twin axes and colour bars have no title)."""
    return [ax for ax in fig.axes if ax.get_title()]


def drawn_confusion(ax, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts written in the cells, the fractions the image shows) of a confusion panel of k classes."""
    counts = np.full((k, k), -1)
    for text in ax.texts:
        p, t = text.get_position()
        counts[int(t), int(p)] = int(text.get_text().split("\n")[0])
    (image,) = ax.images
    return counts, np.asarray(image.get_array(), dtype=float)


def assert_confusion_panel(ax, run: report.Run) -> None:
    k = len(run.classes)
    counts, shown = drawn_confusion(ax, k)
    assert counts.tolist() == run.metrics["confusion"], ax.get_title()
    rows = counts.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shown, np.divide(counts, rows, out=np.zeros(shown.shape), where=rows > 0))
    assert [t.get_text() for t in ax.get_xticklabels()] == list(run.classes) == \
        [t.get_text() for t in ax.get_yticklabels()]


def test_the_notebook_set():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == \
        ["01_tables.ipynb", "02_curves.ipynb", "03_confusion_tsne.ipynb", "04_gradcam.ipynb"]
    for p in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(p, as_version=4)
        assert nb.cells[0].source.startswith('import os\nRESULTS = os.environ.get("RESULTS", '), p.name
        assert not any(cell.get("outputs") for cell in nb.cells), f"{p.name} is committed with outputs"


def test_tables_notebook(kernel, results_small, results, tmp_path):
    nb, figures = execute("01_tables.ipynb", kernel, settings(results_small), tmp_path)
    text = outputs(nb, "text")
    assert "mobilenetv2_d1 (done)" in "\n".join(text) and not figures
    # the last cell: every number of Table 2 recomputed from test_predictions.csv agrees, for every finished run
    assert ast.literal_eval(text[-1]) == {r.name: [] for r in results.done}


def test_curves_notebook(kernel, results_small, results, tmp_path):
    nb, figures = execute("02_curves.ipynb", kernel, settings(results_small), tmp_path)
    assert len(figures) == len(pngs(nb)) == 2
    first = results.done[0]
    other = next(lr for lr in first.config["learning_rates"] if lr != first.selection["lr"])
    for fig, lr in zip(figures, (None, other)):
        expected = []
        for r in results.done:
            want = r.selection["lr"] if lr is None else lr
            selected = np.isclose(want, r.selection["lr"])
            expected.append(f"{r.title}\nLR {want:g}" + (" (selected)" if selected else ""))
        axes = panels(fig)
        assert [ax.get_title() for ax in axes] == expected
        assert axes[0].get_ylabel() == "loss" and all(ax.get_xlabel() == "epoch" for ax in axes)
        for ax, r in zip(axes, results.done):
            folds = r.history.loc[np.isclose(r.history["lr"], r.selection["lr"] if lr is None else lr), "fold"]
            curves = [line for line in ax.lines if len(set(line.get_xdata())) > 1]
            # training and validation loss: one line per fold and their mean
            assert len(curves) == 2 * (folds.nunique() + 1), ax.get_title()
            marks = [list(line.get_xdata()) for line in ax.lines if len(set(line.get_xdata())) == 1]
            assert (marks == [[r.selection["epochs"]] * 2]) == ("(selected)" in ax.get_title()), ax.get_title()
        scores = [ax for ax in fig.axes if not ax.get_title()]  # the twin axes on the right
        assert len(scores) == len(axes) and scores[-1].get_ylabel() == "validation score"
        assert all(0 <= y <= 1 for ax in scores for line in ax.lines for y in line.get_ydata())
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert {"training loss", "validation loss", "validation accuracy", "selected epochs"} <= set(legend)


def test_confusion_tsne_notebook(kernel, results_small, results, tmp_path):
    nb, figures = execute("03_confusion_tsne.ipynb", kernel, settings(results_small), tmp_path)
    assert len(figures) == len(pngs(nb)) == 2  # confusion matrices and the good/poor selection
    text = "\n".join(outputs(nb, "text"))
    assert "t-SNE skipped: mobilenetv2_d0: no trained model" in text
    matrices, selection = figures
    axes = panels(matrices)
    assert [ax.get_title() for ax in axes] == [f"{r.title}\nmacro-F1 {r.metric('macro_f1'):.3f}" for r in results.done]
    for ax, r in zip(axes, results.done):
        assert_confusion_panel(ax, r)
    assert "fraction of the true class" in [ax.get_ylabel() for ax in matrices.axes]
    # best and worst run by test macro-F1 at each depth (the fixture's metrics: MobileNetV2 1.000, MobileNet 0.886)
    picks = [("(a) best at depth 0", "mobilenetv2_d0"), ("(b) worst at depth 0", "mobilenet_d0"),
             ("(c) best at depth 1", "mobilenetv2_d1"), ("(d) worst at depth 1", "mobilenet_d1")]
    axes = panels(selection)
    assert len(axes) == len(picks)
    for ax, (caption, name) in zip(axes, picks):
        r = results.get(name)
        assert ax.get_title() == (f"{caption}: {r.title}\nmacro-F1 {r.metric('macro_f1'):.3f}, "
                                  f"accuracy {r.metric('accuracy'):.3f}")
        assert_confusion_panel(ax, r)
    assert "depth 0 -> best at depth 0: mobilenetv2_d0, worst at depth 0: mobilenet_d0" in text


def test_gradcam_notebook_without_a_model(kernel, results_small, tmp_path):
    nb, figures = execute("04_gradcam.ipynb", kernel, settings(results_small), tmp_path)
    assert "Grad-CAM skipped: mobilenetv2_d0: no trained model" in "\n".join(outputs(nb, "text"))
    assert not figures and not outputs(nb, "image")


@pytest.mark.slow
def test_gradcam_notebook_draws_the_maps(kernel, results_with_model, results_small_data, tmp_path):
    env = settings(results_with_model, DATA=str(results_small_data), SMOOTH_SAMPLES="2")
    nb, figures = execute("04_gradcam.ipynb", kernel, env, tmp_path)
    (fig,) = figures
    pngs(nb)
    run = report.default_cam_run(report.load_results(results_with_model))
    classes, counts, px = run.classes, np.array(run.metrics["confusion"]), run.input_px
    assert f"{run.name} {run.label}" in "\n".join(outputs(nb, "text"))
    cells_fig, bar_fig = fig.subfigs
    cells = cells_fig.subfigs
    assert len(cells) == len(classes) ** 2
    for i, cell in enumerate(cells):
        t, p = divmod(i, len(classes))
        head = cell._suptitle.get_text()
        assert head.startswith(f"true {classes[t]} → predicted {classes[p]}: n = {counts[t, p]}\n"), head
        image_ax, saliency_ax = cell.axes
        if not counts[t, p]:
            assert not image_ax.images and [x.get_text() for x in image_ax.texts] == ["no test image"]
            continue
        assert f"p({classes[p]}) = " in head
        assert (image_ax.get_xlabel(), saliency_ax.get_xlabel()) == ("image + Grad-CAM", "SmoothGrad")
        (grey, cam), (saliency,) = image_ax.images, saliency_ax.images
        grey, cam, saliency = (np.asarray(im.get_array(), dtype=float) for im in (grey, cam, saliency))
        # the maps cover the input the network saw, pixel for pixel, on the colour bars' [0, 1] scale
        assert grey.shape == cam.shape == saliency.shape == (px, px)
        assert grey.min() == 0 and grey.max() == pytest.approx(1) and grey.std() > 0.05
        for heat in (cam, saliency):
            assert np.isfinite(heat).all() and 0 <= heat.min() and heat.max() <= 1
        assert not np.array_equal(cam, grey)
    assert [ax.get_ylabel() for ax in bar_fig.axes] == ["Grad-CAM (overlay)", "SmoothGrad"]
    note = fig._suptitle.get_text()
    assert run.title in note and "Grad-CAM (" in note and "SmoothGrad (" in note
    assert "WARNING" in note  # the regenerated model is untrained: its outputs are not the run's


def test_a_failing_cell_fails_and_namespaces_do_not_leak(kernel):
    run(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("leak = 1")]), kernel)
    with pytest.raises(CellExecutionError, match="NameError"):
        run(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("leak")]), kernel)


def test_settings_do_not_leak_between_notebooks(kernel, tmp_path):
    read = nbformat.v4.new_code_cell('print(repr(__import__("os").environ.get("DATA")))')
    nb = run(nbformat.v4.new_notebook(cells=[read]), kernel, {"DATA": str(tmp_path)})
    assert outputs(nb, "text") == [f"{str(tmp_path)!r}\n"]
    nb = run(nbformat.v4.new_notebook(cells=[read.copy()]), kernel)
    assert outputs(nb, "text") == ["None\n"]
