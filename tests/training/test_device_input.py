"""The GPU input path on the CPU: the device pipelines give the worker pipeline's tensors, and train as it does.

``gpu-decode`` is refused for training off CUDA; its code (decode_jpeg, crop, resize, flip) runs here with
``device="cpu"``, which is the path a GPU takes but for the decoder (nvJPEG there, libjpeg-turbo here).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import shufflenet
from conftest import TINY, write_images
from shufflenet.data import ImageFolderDataset, load_image, scan_image_folder
from shufflenet.data.bad_images import BadImageLog
from shufflenet.training.device_input import build_pipeline, read_encoded
from shufflenet.training.loaders import SeededSamples
from shufflenet.transforms import Preprocessing, batch_normalizer

PRE = Preprocessing.for_size(64)


def batches(samples: list, classes: list[str], name: str, split: int, bad_log: BadImageLog | None = None) -> tuple:
    """The same images through the ``workers`` pipeline and through ``name``, normalised as the model gets them."""
    workers = build_pipeline("workers", PRE, 64, 0.08, True, None, 0.0)
    other = build_pipeline(name, PRE, 64, 0.08, True, None, 0.0, bad_log=bad_log)
    plain = SeededSamples(ImageFolderDataset(samples, classes, workers.transforms[split]), seed=3)
    moved = ImageFolderDataset(samples, classes, other.transforms[split], load=other.load, bad_log=bad_log)
    keys = [(2, i) for i in range(len(samples))]  # epoch 2: (epoch, index) seeds each image's draws
    reference = torch.stack([plain[key][0] for key in keys])
    # through a loader worker process, as in training: the batch is collated there and pickled back
    loader = DataLoader(SeededSamples(moved, seed=3), len(keys), sampler=keys, num_workers=1, collate_fn=other.collate)
    batch, labels = next(iter(loader))
    normalize = batch_normalizer(PRE)
    return normalize(reference), normalize(batch.to("cpu", memory_format=torch.channels_last)), labels


@pytest.mark.parametrize("name", ["device", "gpu-decode"])
@pytest.mark.parametrize("split", [0, 1], ids=["train", "eval"])
def test_device_pipelines_give_the_worker_pipeline_tensors_bit_for_bit(hymenoptera: Path, name: str, split: int):
    samples, classes = scan_image_folder(hymenoptera / "val")
    samples = samples[::8]  # 20 photos of both classes, 200-500 px
    expected, got, labels = batches(samples, classes, name, split)
    assert got.shape == (len(samples), 3, 64, 64) and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, expected)  # same crops, flips, decoder output and resize: identical floats
    assert labels.tolist() == [label for _, label in samples]


def test_gpu_decode_turns_exif_rotated_photos_upright_as_pil_does(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(tmp_path / f"o{orientation}.jpg", exif=exif, quality=95)
    samples = [(tmp_path / f"o{k}.jpg", 0) for k in range(1, 9)]
    for path, _ in samples:
        upright = load_image(path)  # PIL's exif_transpose
        item = read_encoded(path)
        assert (item.width, item.height) == upright.size and item.data.ndim == 1  # bytes, read as JPEG
    expected, got, _ = batches(samples, ["a"], "gpu-decode", split=1)
    assert torch.equal(got, expected)


def test_gpu_decode_replaces_a_file_corrupt_past_its_header_and_logs_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg", quality=95)
    Image.new("CMYK", (70, 70), (0, 200, 100, 0)).save(tmp_path / "cmyk.jpg")  # nvJPEG's gap: PIL decodes it
    Image.new("RGB", (70, 70), (10, 200, 30)).save(tmp_path / "g.png")  # not a JPEG: PIL decodes it
    data = (tmp_path / "1.jpg").read_bytes()
    (tmp_path / "1.jpg").write_bytes(data[: len(data) // 2])  # the header reads; the pixels do not
    samples = [(tmp_path / name, 0) for name in ("0.jpg", "1.jpg", "2.jpg", "cmyk.jpg", "g.png")]
    log = BadImageLog(tmp_path / "bad_images.txt")
    assert read_encoded(tmp_path / "cmyk.jpg").data.ndim == 3 and read_encoded(tmp_path / "g.png").data.ndim == 3
    _, got, _ = batches(samples, ["a"], "gpu-decode", split=1, bad_log=log)
    assert torch.equal(got[1], got[2])  # the next good image of the batch stands in
    assert [Path(path).name for path in log.read()] == ["1.jpg"]
    cmyk = batch_normalizer(PRE)(torch.from_numpy(np.asarray(load_image(tmp_path / "cmyk.jpg"))).permute(2, 0, 1)[None])
    assert torch.allclose(got[3], cmyk[0, :, 3:67, 3:67])  # resize 73 -> crop 64 of a flat colour: that colour


def test_training_with_the_device_pipeline_is_the_worker_pipeline_s_run(tmp_path: Path) -> None:
    write_images(tmp_path / "data" / "train", 32)  # JPEGs whose colour (under noise) tells the class
    write_images(tmp_path / "data" / "val", 8, seed=1)
    options = {**TINY, "data": str(tmp_path / "data"), "epochs": 3, "small_input": True, "recipe": "finetune"}
    options["cache_images"] = False
    plain = shufflenet.train(out=str(tmp_path / "workers"), **options)
    moved = shufflenet.train(out=str(tmp_path / "device"), input_pipeline="device", **{**options, "workers": 1})
    assert [r["train_loss"] for r in moved.history] == [r["train_loss"] for r in plain.history]
    first, last = moved.history[0], moved.history[-1]
    assert last["train_loss"] < 0.6 * first["train_loss"] and last["train_acc"] > 0.85  # it learns
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["state_dict"] for run in ("workers", "device"))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_gpu_decode_is_refused_without_cuda_and_says_what_to_use(image_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs a CUDA device.*use --input-pipeline device"):
        shufflenet.train(data=str(image_tree), out=str(tmp_path / "run"), input_pipeline="gpu-decode", **TINY)
    assert not (tmp_path / "run").exists()  # refused before anything is written
    with pytest.raises(ValueError, match=r"auto-augment, --random-erase and --pad-crop"):
        build_pipeline("gpu-decode", PRE, 64, 0.08, True, "trivialaugment", 0.0)
    with pytest.raises(ValueError, match=r"--pad-crop work on decoded images.*use --input-pipeline device"):
        build_pipeline("gpu-decode", PRE, 64, 0.08, True, None, 0.0, pad_crop=4)


def test_a_jpeg_payload_is_the_file_s_bytes(tmp_path: Path) -> None:
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "a.jpg")
    item = read_encoded(tmp_path / "a.jpg")
    assert bytes(item.data.numpy()) == (tmp_path / "a.jpg").read_bytes()
    assert Image.open(io.BytesIO(bytes(item.data.numpy()))).size == (30, 20) == (item.width, item.height)


def test_compile_trains_through_the_compiled_module_and_matches_eager(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inductor on this CPU takes minutes to build the kernels; dynamo's capture with the eager backend runs the
    # captured graph in seconds and is what --compile changes in the loop.
    compiled: list[torch.nn.Module] = []
    real_compile = torch.compile

    def eager_compile(module: torch.nn.Module) -> torch.nn.Module:
        compiled.append(module)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    options = {**TINY, "data": str(image_tree), "epochs": 1}
    plain = shufflenet.train(out=str(tmp_path / "plain"), **options)
    fast = shufflenet.train(out=str(tmp_path / "compiled"), compile=True, **options)
    assert len(compiled) == 1 and fast.history[0]["train_loss"] == plain.history[0]["train_loss"]
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["state_dict"] for run in ("plain", "compiled"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)  # no _orig_mod. prefixes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA GPU")
def test_gpu_decode_on_cuda_is_the_cpu_path_up_to_decoder_rounding(hymenoptera: Path) -> None:
    # Not run where these tests were written (no GPU): nvJPEG's IDCT and the float resize CUDA uses for uint8
    # differ from libjpeg-turbo and the CPU's uint8 resize by a few levels, not by a wrong crop, flip or rotation.
    samples, classes = scan_image_folder(hymenoptera / "val")
    pipeline = build_pipeline("gpu-decode", PRE, 64, 0.08, True, None, 0.0)
    dataset = SeededSamples(ImageFolderDataset(samples[::8], classes, pipeline.transforms[0], load=pipeline.load), 3)
    keys = [(2, i) for i in range(len(samples[::8]))]
    on_cpu = pipeline.collate([dataset[key] for key in keys])[0].to("cpu").float()
    on_gpu = pipeline.collate([dataset[key] for key in keys])[0].to("cuda").cpu().float()
    assert (on_gpu - on_cpu).abs().mean() < 2.0
