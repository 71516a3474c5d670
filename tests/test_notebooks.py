"""The notebooks run top to bottom (nbclient, python3 kernel) against the committed results fixture; a cell that
raises fails the test. The fixture has no model weights, so the t-SNE and Grad-CAM notebooks print why they skip
those figures; the figures themselves are drawn in test_report.py from regenerated models
(conftest.results_with_model).

One kernel serves all notebooks (importing TensorFlow takes several seconds per kernel); its namespace is reset
before each notebook, so a notebook that relied on another's variables would fail here."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def kernel(results_small):
    # the kernel process inherits this environment, which the notebooks' first cell reads
    env = {"RESULTS": str(results_small), "N_BOOT": "20"}
    km = KernelManager(kernel_name="python3")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        km.start_kernel(cwd=str(NOTEBOOKS))
    yield km
    km.shutdown_kernel(now=True)


def execute(name: str, km: KernelManager) -> nbformat.NotebookNode:
    return run(nbformat.read(NOTEBOOKS / name, as_version=4), km)


def run(nb: nbformat.NotebookNode, km: KernelManager) -> nbformat.NotebookNode:
    nb.cells.insert(0, nbformat.v4.new_code_cell('get_ipython().run_line_magic("reset", "-f")'))
    NotebookClient(nb, km=km, timeout=180, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
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


def test_tables_notebook(kernel):
    nb = execute("01_tables.ipynb", kernel)
    text = "\n".join(outputs(nb, "text"))
    assert "mobilenetv2_d1 (done)" in text and "'cbr_tiny': []" in text


def test_curves_notebook(kernel):
    nb = execute("02_curves.ipynb", kernel)
    assert len(outputs(nb, "image")) == 2


def test_confusion_tsne_notebook(kernel):
    nb = execute("03_confusion_tsne.ipynb", kernel)
    assert len(outputs(nb, "image")) == 2  # confusion matrices and the good/poor selection
    assert "t-SNE skipped: mobilenetv2_d0: no trained model" in "\n".join(outputs(nb, "text"))


def test_gradcam_notebook(kernel):
    nb = execute("04_gradcam.ipynb", kernel)
    assert "Grad-CAM skipped: mobilenetv2_d0: no trained model" in "\n".join(outputs(nb, "text"))


def test_a_failing_cell_fails_and_namespaces_do_not_leak(kernel):
    run(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("leak = 1")]), kernel)
    with pytest.raises(CellExecutionError, match="NameError"):
        run(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("leak")]), kernel)
