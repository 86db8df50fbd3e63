"""Folders of image files (ImageNet layout): decoded on demand, streamed through the simulator and the CLI."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import netx_export
from bsnn_lava import convert, simulate
from bsnn_lava.cli import main
from bsnn_lava.datasets import DataError, ImageFolder, load_dataset

from conftest import SmallVGG, randomize_batchnorm

SIZE = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes (sorted names), 17 images of assorted sizes and modes, in nested subfolders too."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k, name in enumerate(["cat", "ant", "bee"]):
        (root / name / "more").mkdir(parents=True)
        for i in range(5 + k):
            h, w = rng.integers(12, 40, size=2)
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            image = Image.fromarray(pixels) if i % 3 else Image.fromarray(pixels[..., 0]).convert("L")
            image.save(root / name / ("more" if i == 2 else "") / f"{i}.{'png' if i % 2 else 'bmp'}")
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallVGG(channels=3, num_classes=3))
    calib = np.random.default_rng(1).integers(0, 256, size=(40, SIZE, SIZE, 3), dtype=np.uint8)
    return convert(model, calib)


def test_classes_labels_and_views(folder):
    images = ImageFolder(folder, SIZE)
    assert images.classes == ["ant", "bee", "cat"]
    assert len(images) == 18 and images.labels.tolist() == [0] * 6 + [1] * 7 + [2] * 5
    view = images[4:9]
    assert len(view) == 5 and view.labels.tolist() == [0, 0, 1, 1, 1]
    decoded = np.asarray(view)
    assert decoded.shape == (5, SIZE, SIZE, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, np.asarray(images)[4:9])


def test_centre_crop_of_the_resized_image(tmp_path):
    (tmp_path / "a").mkdir()
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, 20:40] = 200  # a band in the middle third of a wide image
    Image.fromarray(pixels).save(tmp_path / "a" / "x.png")
    decoded = np.asarray(ImageFolder(tmp_path, SIZE))[0]
    # shorter side 20 -> 16 * 256 / 224 = 18 rows, width 54; the centre 16 columns lie in the band's 18
    assert decoded.shape == (SIZE, SIZE, 3) and int(decoded[:, 2:-2].min()) == 200


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(DataError, match="no images in class subfolders"):
        load_dataset(str(tmp_path))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        np.asarray(ImageFolder(tmp_path, SIZE))


def test_streamed_simulation_equals_decoded(folder, network):
    images = ImageFolder(folder, SIZE)
    streamed = simulate(network, images, images.labels, steps=12, batch_size=4)
    decoded = simulate(network, np.asarray(images), images.labels, steps=12, batch_size=4)
    assert json.dumps(streamed.summary(images.labels)) == json.dumps(decoded.summary(images.labels))
    assert sum(streamed.n_spikes.values()) > 0


def test_cli_simulate_on_a_folder(folder, network, tmp_path, capsys):
    net = tmp_path / "net.h5"
    netx_export.write(network, net)
    images = ImageFolder(folder, SIZE)
    np.savez(tmp_path / "same.npz", x=np.asarray(images), y=images.labels)
    for data, out in ((folder, "folder.json"), (tmp_path / "same.npz", "npz.json")):
        assert main(["simulate", str(net), "--data", str(data), "--steps", "10", "--batch-size", "5", "--limit", "15",
                     "--json", str(tmp_path / out)]) == 0
    assert (tmp_path / "folder.json").read_text() == (tmp_path / "npz.json").read_text()
    (folder / "bee" / "zz_broken.png").write_bytes(b"broken")
    try:
        capsys.readouterr()
        assert main(["simulate", str(net), "--data", str(folder), "--steps", "10"]) == 2
        assert "zz_broken.png: not a readable image" in capsys.readouterr().err
    finally:
        (folder / "bee" / "zz_broken.png").unlink()
