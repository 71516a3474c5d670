"""The notebooks run top to bottom (nbclient, python3 kernel) against the committed results fixture; a cell that
raises fails the test. The model-dependent notebooks run on a copy of the fixture with regenerated (untrained)
models and the regenerated dataset (conftest.results_with_model), so their figures are really drawn; what they
print without a model is the library's FigureUnavailable message, tested in test_report.py (each notebook run
costs a kernel start and a TensorFlow import, so the set is kept to one run per notebook)."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, monkeypatch, **env: str) -> nbformat.NotebookNode:
    # the kernel is a child process: it inherits these variables, which the notebooks' first cell reads
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb, kind: str) -> list[str]:
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "image" and "image/png" in out.get("data", {}):
                found.append(out["data"]["image/png"])
            elif kind == "text":
                found.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return found


def test_the_notebook_set():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == \
        ["01_tables.ipynb", "02_curves.ipynb", "03_confusion_tsne.ipynb", "04_gradcam.ipynb"]
    for p in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(p, as_version=4)
        assert nb.cells[0].source.startswith('import os\nRESULTS = os.environ.get("RESULTS", '), p.name
        assert not any(cell.get("outputs") for cell in nb.cells), f"{p.name} is committed with outputs"


def test_tables_notebook(results_small, monkeypatch):
    nb = execute("01_tables.ipynb", monkeypatch, RESULTS=str(results_small), N_BOOT="20")
    text = "\n".join(outputs(nb, "text"))
    assert "mobilenetv2_d1 (done)" in text and "'cbr_tiny': []" in text


def test_curves_notebook(results_small, monkeypatch):
    nb = execute("02_curves.ipynb", monkeypatch, RESULTS=str(results_small))
    assert len(outputs(nb, "image")) == 2


def test_confusion_tsne_notebook(results_with_model, tiny_synthetic, monkeypatch):
    nb = execute("03_confusion_tsne.ipynb", monkeypatch, RESULTS=str(results_with_model), DATA=str(tiny_synthetic))
    assert len(outputs(nb, "image")) == 3
    assert "skipped" not in "\n".join(outputs(nb, "text"))


def test_gradcam_notebook(results_with_model, tiny_synthetic, monkeypatch):
    nb = execute("04_gradcam.ipynb", monkeypatch, RESULTS=str(results_with_model), DATA=str(tiny_synthetic),
                 SMOOTH_SAMPLES="2")
    assert len(outputs(nb, "image")) == 1
    assert "Grad-CAM by tf-keras-vis" in "\n".join(outputs(nb, "text"))

