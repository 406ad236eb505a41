"""ONNX export (the [onnx] extra), checked with onnxruntime against PyTorch."""

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from convmixer_kernels.cli.export import exportable_copy, export_onnx, main, max_onnx_error  # noqa: E402
from convmixer_kernels.models import get_model  # noqa: E402
from convmixer_kernels.models import ConvMixer  # noqa: E402
from convmixer_kernels.modules import FusedMixerBlock  # noqa: E402


def random_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("k", [3, 4])
def test_exportable_copy_is_plain_and_equal(k):
    model = random_bn(ConvMixer(16, 2, kernel_size=k, patch_size=2, num_classes=5))
    plain = exportable_copy(model)
    assert not any(isinstance(m, FusedMixerBlock) for m in plain.modules())
    assert not any(isinstance(m, nn.Conv2d) and m.padding == "same" for m in plain.modules())
    assert any(isinstance(m, FusedMixerBlock) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [3, 4])
def test_onnxruntime_matches_pytorch(tmp_path, k):
    torch.manual_seed(0)
    model = random_bn(ConvMixer(16, 2, kernel_size=k, patch_size=2, num_classes=5))
    path = export_onnx(model, str(tmp_path / "m.onnx"), input_size=(24, 24))
    # A batch other than the exported one: the batch dimension is dynamic.
    assert max_onnx_error(model, path, torch.randn(3, 3, 24, 24)) < 1e-5


def test_export_cli(tmp_path, capsys):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save(get_model("convmixer_64_4").state_dict(), checkpoint)
    output = tmp_path / "model.onnx"
    main(["--model", "convmixer_64_4", "--checkpoint", str(checkpoint), "--output", str(output)])
    out = capsys.readouterr().out
    assert output.is_file() and "max abs difference" in out
    assert float(out.rsplit(" ", 1)[-1]) < 1e-5


def test_export_cli_says_when_the_weights_are_random(tmp_path, capsys):
    output = tmp_path / "random.onnx"
    main(["--model", "convmixer_64_4", "--output", str(output), "--no-check"])
    captured = capsys.readouterr()
    assert output.is_file() and f"wrote {output}" in captured.out
    assert "exporting randomly initialized weights: no --checkpoint or --pretrained given" in captured.err
