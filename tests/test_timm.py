"""timm builds our models (features_only, pretrained files) once shufflenet is imported; skipped without timm."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import shufflenet
from shufflenet import create_model
from shufflenet.checkpoints import make_checkpoint, save_checkpoint
from shufflenet.timm_compat import register_timm_models, register_when_timm_imported


@pytest.fixture(scope="module")
def timm():
    module = pytest.importorskip("timm")
    register_when_timm_imported()  # timm is imported by now: registers at once (nothing twice)
    return module


def test_without_timm_shufflenet_works_and_import_timm_fails_as_usual() -> None:
    script = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("error")

        class NoTimm:  # timm not installed
            def find_spec(self, fullname, path=None, target=None):
                if fullname == "timm":
                    raise ModuleNotFoundError("No module named 'timm'", name="timm")

        sys.meta_path.insert(0, NoTimm())
        import shufflenet
        shufflenet.create_model("shufflenet_v2_x0_5", features_only=True)
        try:
            import timm
        except ModuleNotFoundError as err:
            print("missing", err.name)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "missing timm"


def test_import_shufflenet_then_timm_registers_without_importing_timm_itself(timm) -> None:
    script = textwrap.dedent(
        """
        import sys
        import shufflenet
        assert "timm" not in sys.modules, "import shufflenet must not import timm"
        import timm
        model = timm.create_model("shufflenet_v2_x1_0", pretrained=False, features_only=True)
        print(type(model).__name__, model.feature_info.channels(), len(timm.list_models("shufflenet_*")))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["FeatureListNet", "[24,", "116,", "232,", "464]", str(len(shufflenet.list_models()))]


def test_every_model_is_registered_once_and_timm_names_are_never_overwritten(timm) -> None:
    assert sorted(timm.list_models("shufflenet_*")) == shufflenet.list_models()
    assert register_timm_models()["registered"] == []  # already there: nothing registered twice
    assert register_timm_models(["resnet18"]) == {"registered": [], "skipped": ["resnet18"]}
    assert timm.models.model_entrypoint("resnet18").__module__ == "timm.models.resnet"


@pytest.mark.parametrize(
    ("name", "out_indices"),
    [("shufflenet_v2_x0_5", None), ("shufflenet_v2_x0_5", (1, 4)), ("shufflenet_v1_g8_x0_25", None)],
)
def test_timm_feature_model_equals_ours(timm, name, out_indices) -> None:
    kwargs = {} if out_indices is None else {"out_indices": out_indices}
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, features_only=True, **kwargs).eval()
    ours = create_model(name, features_only=True, **kwargs).eval()
    assert isinstance(theirs, timm.models.FeatureListNet)
    for accessor in ("channels", "reduction", "module_name"):
        assert getattr(theirs.feature_info, accessor)() == getattr(ours.feature_info, accessor)()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same keys, same shapes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(theirs(x), ours(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_timm_classifier_model_is_ours(timm) -> None:
    model = timm.create_model("shufflenet_v1_g3_x0_5", num_classes=7)
    assert isinstance(model, shufflenet.models.ShuffleNetV1) and model.fc.out_features == 7
    assert model.pretrained_cfg["classifier"] == "fc" and model.pretrained_cfg["input_size"] == (3, 224, 224)


def test_timm_loads_a_torchvision_file(timm, tmp_path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.shufflenet_v2_x0_5().eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
    path = tmp_path / "shufflenetv2_x0.5.pth"
    torch.save(reference.state_dict(), path)
    features = timm.create_model(
        "shufflenet_v2_x0_5", pretrained=True, features_only=True, pretrained_cfg_overlay={"file": str(path)}
    ).eval()
    classifier = timm.create_model("shufflenet_v2_x0_5", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    x = torch.randn(2, 3, 64, 64)
    want = create_feature_extractor(reference, ["maxpool", "stage2", "stage3", "stage4"])(x)
    with torch.no_grad():
        for got, module in zip(features(x), want, strict=True):
            torch.testing.assert_close(got, want[module], rtol=0, atol=0)
        torch.testing.assert_close(classifier.eval()(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_timm_loads_our_checkpoint(timm, tmp_path, suffix) -> None:
    name = "shufflenet_v1_g3_x0_5"
    trained = create_model(name, num_classes=2).eval()
    for module in trained.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
    path = save_checkpoint(tmp_path / f"best{suffix}", make_checkpoint(trained, name))
    features = timm.create_model(name, pretrained=True, features_only=True, pretrained_cfg_overlay={"file": str(path)})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(features.eval()(x)[-1], trained.forward_features(x), rtol=0, atol=0)


def test_timm_rejects_a_file_for_another_model_naming_the_key(timm, tmp_path) -> None:
    path = tmp_path / "g3.pth"
    torch.save(create_model("shufflenet_v1_g3_x0_5").state_dict(), path)
    with pytest.raises(ValueError, match=r"key 'conv1.0.weight' has shape \(12, 3, 3, 3\).*shufflenet_v1_g8_x0_5"):
        timm.create_model("shufflenet_v1_g8_x0_5", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    torch.save({"model": torchvision.models.mobilenet_v3_small().state_dict()}, path)
    with pytest.raises(ValueError, match=r"checkpoint has no key 'conv1\.0\.weight'.*shufflenet convert"):
        timm.create_model("shufflenet_v2_x0_5", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
