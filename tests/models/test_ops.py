import contextlib
import io

import pytest
import torch

from shufflenet.models.ops import ChannelShuffle, channel_shuffle, interleave_channels, make_divisible


def paper_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The v1 paper's definition written out index by index: output j*g+i is input i*n+j."""
    n = x.shape[1] // groups
    out = torch.empty_like(x)
    for i in range(groups):
        for j in range(n):
            out[:, j * groups + i] = x[:, i * n + j]
    return out


@pytest.mark.parametrize("groups,channels", [(2, 8), (3, 12), (4, 8), (8, 16), (3, 60)])
def test_channel_shuffle_matches_paper_definition(groups: int, channels: int) -> None:
    x = torch.randn(2, channels, 5, 3)
    assert torch.equal(channel_shuffle(x, groups), paper_shuffle(x, groups))


def test_channel_shuffle_channels_last_keeps_layout_and_values() -> None:
    x = torch.randn(2, 12, 5, 7).contiguous(memory_format=torch.channels_last)
    out = channel_shuffle(x, 3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, paper_shuffle(x.contiguous(), 3))


def test_channel_shuffle_gradient_is_inverse_permutation() -> None:
    x = torch.randn(1, 6, 2, 2, requires_grad=True)
    weights = torch.arange(6.0).view(1, 6, 1, 1)
    (channel_shuffle(x, 2) * weights).sum().backward()
    # d/dx of sum(w * shuffle(x)) is shuffle^-1(w): input channel i*n+j receives weight of output j*g+i.
    expected = torch.tensor([0.0, 2.0, 4.0, 1.0, 3.0, 5.0]).view(1, 6, 1, 1).expand(1, 6, 2, 2)
    assert torch.equal(x.grad, expected)
    assert torch.autograd.gradcheck(
        lambda t: channel_shuffle(t, 3), torch.randn(1, 6, 2, 2, dtype=torch.double, requires_grad=True)
    )


def test_channel_shuffle_twice_with_transposed_groups_is_identity() -> None:
    x = torch.randn(1, 12, 3, 3)
    assert torch.equal(channel_shuffle(channel_shuffle(x, 3), 4), x)


def test_channel_shuffle_rejects_indivisible_channels() -> None:
    with pytest.raises(ValueError, match="10 channels do not split into 3 groups"):
        channel_shuffle(torch.randn(1, 10, 2, 2), 3)


def test_channel_shuffle_module() -> None:
    x = torch.randn(1, 8, 2, 2)
    assert torch.equal(ChannelShuffle(4)(x), paper_shuffle(x, 4))
    assert "groups=4" in repr(ChannelShuffle(4))


def test_channel_shuffle_exports_to_onnx_as_reshape_transpose(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "shuffle.onnx"
    x = torch.randn(2, 12, 4, 4)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        torch.onnx.export(
            ChannelShuffle(3).eval(), (x,), str(path), dynamo=True, input_names=["x"], external_data=False
        )
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops == ["Reshape", "Transpose", "Reshape"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    assert torch.equal(torch.from_numpy(out), paper_shuffle(x, 3))


@pytest.mark.parametrize("channels_last", [False, True])
def test_interleave_channels_is_concat_then_shuffle(channels_last: bool) -> None:
    a, b = torch.randn(2, 6, 5, 3), torch.randn(2, 6, 5, 3)
    if channels_last:
        a, b = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    out = interleave_channels(a, b)
    assert torch.equal(out, paper_shuffle(torch.cat((a, b), 1), 2))
    assert torch.equal(out[:, 0::2], a) and torch.equal(out[:, 1::2], b)
    with pytest.raises(ValueError, match=r"shapes differ, \(2, 6, 5, 3\) and \(2, 4, 5, 3\)"):
        interleave_channels(a, b[:, :4])


@pytest.mark.parametrize("value,divisor,expected", [(6, 4, 8), (100, 8, 104), (50, 8, 48), (1, 8, 8), (36, 4, 36)])
def test_make_divisible(value: float, divisor: int, expected: int) -> None:
    assert make_divisible(value, divisor) == expected
