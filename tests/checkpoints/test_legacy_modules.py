"""The old modules ``shufflenet.weights`` and ``shufflenet.converters`` keep every public name working."""

import torch

from shufflenet import checkpoints, converters, weights
from shufflenet.checkpoints.formats import megvii, mmpretrain, v1_shuffle

WEIGHTS_NAMES = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CLASSIFIER_PREFIXES",
    "CheckpointError",
    "FormatAdapter",
    "LoadReport",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "make_checkpoint",
    "read_file",
    "register_adapter",
    "save_checkpoint",
    "unwrap_state_dict",
]


def test_weights_names_are_the_checkpoints_objects() -> None:
    for name in WEIGHTS_NAMES:
        assert getattr(weights, name) is getattr(checkpoints, name), name


def test_converters_names_are_the_formats_objects() -> None:
    assert converters.convert_checkpoint is checkpoints.convert_checkpoint
    assert converters.infer_model_name is checkpoints.infer_model_name
    assert converters.detect_layout is checkpoints.detect_layout
    assert converters.SOURCES == ("megvii", "mmpretrain")
    assert converters.ShuffleOrderError is v1_shuffle.ShuffleOrderError
    assert issubclass(converters.ShuffleOrderError, weights.CheckpointError)
    assert converters.shuffle_sources is v1_shuffle.shuffle_sources
    assert converters.unit_permutation is v1_shuffle.unit_permutation
    assert converters.MEGVII_PREPROCESSING is megvii.MEGVII_PREPROCESSING
    assert converters.MMPRETRAIN_PREPROCESSING is mmpretrain.MMPRETRAIN_PREPROCESSING
    assert [layout.name for layout in converters.LAYOUTS] == [
        "megvii ShuffleNet v1",
        "mmpretrain ShuffleNet v1",
        "mmpretrain ShuffleNet v2",
        "megvii ShuffleNetV2+",
    ]


def test_old_import_path_round_trips_a_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    from shufflenet import create_model

    model = create_model("shufflenet_v2_x0_5", num_classes=2).eval()
    path = weights.save_checkpoint(tmp_path / "best.pt", weights.make_checkpoint(model, "shufflenet_v2_x0_5"))
    loaded = weights.load_model(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert weights.load_pretrained(create_model("shufflenet_v2_x0_5", num_classes=2), path).loaded == len(
        model.state_dict()
    )
