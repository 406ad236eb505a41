"""Parameter and MAC counts against the models themselves and the published figures."""

import pytest
import torch
from torch import nn

from convmixer_kernels.cli.count import count_architecture, count_model, main
from convmixer_kernels.models import CONFIGS
from convmixer_kernels.models import ConvMixer

# The mmpretrain model zoo's FLOPs (metafile.yml), reproduced exactly by the convention.
PUBLISHED_FLOPS = {
    "convmixer_768_32": 19_623_051_264,
    "convmixer_1024_20_ks9_p14": 5_550_112_768,
    "convmixer_1536_20": 48_713_170_944,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_FLOPS))
def test_published_convention_is_reproduced(name):
    count = count_model(name)
    assert count.published_convention == PUBLISHED_FLOPS[name]
    assert count.params == CONFIGS[name].params
    # The published figure is not a MAC count of the model: it lacks the depthwise convs.
    assert count.macs_without_depthwise < count.published_convention < count.macs


def hooked_macs(model: nn.Module, x: torch.Tensor):
    """(all, depthwise) multiply-accumulates of the convs and linears, from forward hooks."""
    totals = {"all": 0, "depthwise": 0}

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            macs = output.numel() // output.shape[0] * module.weight[0].numel()
            if module.groups > 1:
                totals["depthwise"] += macs
        else:
            macs = module.in_features * module.out_features
        totals["all"] += macs

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    return totals["all"], totals["depthwise"]


@pytest.mark.parametrize("k, p, size, act", [(5, 2, 32, "gelu"), (4, 3, 40, "relu"), (7, 7, 56, "gelu")])
def test_counts_match_the_model(k, p, size, act):
    model = ConvMixer(24, 3, kernel_size=k, patch_size=p, num_classes=7, activation=act, fused=False).eval()
    count = count_architecture(24, 3, k, p, num_classes=7, input_size=size, activation=act)
    assert count.params == sum(t.numel() for t in model.parameters())
    depthwise_params = sum(b[0].fn[0].weight.numel() + b[0].fn[0].bias.numel() for b in model.blocks)
    assert count.params_without_depthwise == count.params - depthwise_params
    macs, depthwise = hooked_macs(model, torch.randn(1, 3, size, size))
    assert (count.macs, count.macs_depthwise) == (macs, depthwise)


def test_cli_table(capsys):
    main(["--model", "convmixer_768_32", "--model", "convmixer_64_4", "--input-size", "224"])
    out = capsys.readouterr().out
    assert "21,110,248" in out and "19.62" in out and "20.68" in out
    assert "leave out the depthwise convolutions" in out
