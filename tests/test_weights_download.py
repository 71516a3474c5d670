"""ImageNet weights are fetched as Keras fetches them (keras.utils.get_file, Keras' names and hashes) into
$KERAS_HOME/models, here from a local http.server on 127.0.0.1 standing in for Keras' storage; a wrong file is
refused and not cached; offline mode and an unreachable server refuse with one message naming file, URL and place.
No test sends traffic anywhere but 127.0.0.1."""
from __future__ import annotations

import functools
import hashlib
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmark import weights
from benchmark.catalog import IMAGENET, ImagenetFile
from benchmark.weights import BASE_URL_ENV, OFFLINE_ENV, WeightsMissing

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "keras" / "models"
MOBILENET = IMAGENET["mobilenet"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Mirror:
    """A directory in Keras Applications' folder layout, served on 127.0.0.1 at a free port; counts GET requests."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep pytest's output to the tests' own lines
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def put(self, f: ImagenetFile, content: bytes | Path) -> None:
        dest = self.root / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, dest)
        else:
            dest.write_bytes(content)


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    return home


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    (tmp_path / "mirror").mkdir()
    m = Mirror(tmp_path / "mirror")
    m.thread.start()
    monkeypatch.setenv(BASE_URL_ENV, m.url)
    yield m
    m.server.shutdown()
    m.server.server_close()
    m.thread.join()


@pytest.fixture(scope="session")
def shared_mobilenet() -> Path:
    path = SHARED_WEIGHTS / MOBILENET.name
    if not path.is_file():
        pytest.skip(f"offline MobileNet weights {path} not found (../shared absent)")
    return path


def test_missing_file_is_downloaded_into_the_keras_cache(keras_home, mirror, shared_mobilenet):
    from benchmark.registry import choose_weights, get_spec
    mirror.put(MOBILENET, shared_mobilenet)
    target = keras_home / "models" / MOBILENET.name
    assert choose_weights(get_spec("mobilenet"), "auto", 224) == ("none", None)  # auto never downloads
    assert choose_weights(get_spec("mobilenet"), "imagenet", 224) == ("imagenet", str(target))
    assert mirror.requests == ["/mobilenet/mobilenet_2_5_224_tf_no_top.h5"]
    assert sha256(target) == sha256(shared_mobilenet)
    assert sorted(p.name for p in target.parent.iterdir()) == [MOBILENET.name]  # no temporary download left
    # now cached: used as it is, by imagenet and auto alike
    assert choose_weights(get_spec("mobilenet"), "auto", 128) == ("imagenet", str(target))
    assert weights.imagenet_path("mobilenet") == target
    assert len(mirror.requests) == 1


def test_wrong_file_is_refused_and_not_cached(keras_home, mirror, capsys):
    vgg16 = IMAGENET["vgg16"]
    mirror.put(vgg16, b"not the VGG16 weights")
    with pytest.raises(WeightsMissing) as err:
        weights.imagenet_path("vgg16")
    message = str(err.value)
    for part in (vgg16.name, mirror.url + vgg16.path, str(keras_home / "models" / vgg16.name), "download failed",
                 vgg16.md5):
        assert part in message
    assert mirror.requests == ["/" + vgg16.path]
    assert list((keras_home / "models").iterdir()) == []


def test_cached_file_with_the_wrong_hash_is_downloaded_again(keras_home, mirror):
    vgg16 = IMAGENET["vgg16"]
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / vgg16.name).write_bytes(b"truncated")
    assert weights.status(vgg16) == "mismatch"
    mirror.put(vgg16, b"still not the VGG16 weights")
    with pytest.raises(WeightsMissing, match="does not match Keras' md5"):
        weights.imagenet_path("vgg16")
    assert mirror.requests == ["/" + vgg16.path]
    assert (keras_home / "models" / vgg16.name).read_bytes() == b"truncated"  # replaced only by a sound file


@pytest.mark.parametrize("how", ["env", "cli"])
def test_offline_refuses_with_one_message(keras_home, mirror, monkeypatch, capsys, how):
    from benchmark.__main__ import main
    vgg16 = IMAGENET["vgg16"]
    mirror.put(vgg16, b"never fetched")
    expected = (vgg16.name, mirror.url + vgg16.path, str(keras_home / "models" / vgg16.name), "downloads are off")
    if how == "env":
        monkeypatch.setenv(OFFLINE_ENV, "1")
        with pytest.raises(WeightsMissing) as err:
            weights.imagenet_path("vgg16")
        assert all(part in str(err.value) for part in expected)
    else:
        monkeypatch.setenv(OFFLINE_ENV, "0")  # restored after the test, although --offline sets it
        code = main(["--offline", "--backbone", "vgg16", "--depth", "0", "--weights", "imagenet"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("benchmark: error: ImageNet weights for vgg16")
        assert all(part in lines[0] for part in expected)
    assert mirror.requests == []


def test_unreachable_server_refuses_with_one_message(keras_home, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(BASE_URL_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(WeightsMissing, match=rf"download failed.*Download http://127\.0\.0\.1:{port}/nasnet/"
                                             r"NASNet-mobile-no-top\.h5 and save it as .*nasnet_mobile_no_top\.h5"):
        weights.imagenet_path("nasnetmobile")
    assert not (keras_home / "models" / "nasnet_mobile_no_top.h5").exists()


def test_weights_listing(keras_home, capsys):
    models = keras_home / "models"
    models.mkdir(parents=True)
    (models / MOBILENET.name).write_bytes(b"x")
    (models / IMAGENET["vgg16"].name).write_bytes(b"x")
    assert weights.main([]) == 0
    rows = {line.split()[0]: line.split()[2:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == list(IMAGENET)
    assert rows["mobilenet"][:2] == ["yes", "unpinned"]
    assert rows["vgg16"] == ["yes", "mismatch"]
    assert rows["xception"] == ["no", "missing"]
    # "ok" is Keras' md5 matching: checked against a file whose hash we know
    ok = ImagenetFile(IMAGENET["vgg16"].name, IMAGENET["vgg16"].path, hashlib.md5(b"x").hexdigest())
    assert weights.status(ok) == "ok"


def test_weights_download_option(keras_home, mirror, shared_mobilenet, capsys):
    mirror.put(MOBILENET, shared_mobilenet)
    assert weights.main(["--download", "mobilenet"]) == 0
    assert sha256(keras_home / "models" / MOBILENET.name) == sha256(shared_mobilenet)
    assert weights.main(["--download", "resnet18"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"benchmark weights: error: --download resnet18: not a pretrained backbone; valid: {', '.join(IMAGENET)}"]
