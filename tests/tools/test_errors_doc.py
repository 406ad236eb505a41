"""docs/errors.md, linked from the README, lists the messages the code really gives."""

import os

from convmixer_kernels.models.preprocess import MAX_RESIZED_PIXELS
from tests.harness import ROOT



def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_readme_links_the_errors_page():
    assert "[docs/errors.md](docs/errors.md)" in read("README.md")


def test_errors_page_quotes_the_messages_and_the_limit():
    doc = read("docs", "errors.md")
    # Phrases each copied from a message the tests of that message check.
    for phrase in ("is damaged or not a checkpoint", "holds Python objects that a weights-only load refuses",
                   "delete it (rm PATH) and call get_model(..., pretrained=True) again",
                   "is empty; give the path of a checkpoint file", "must be a positive integer",
                   "install the [onnx] extra", "--skip-broken", "Pass --class-map FILE", "it looks HWC",
                   "momentum must be a float", "torch.jit.script does not support"):
        assert phrase in doc, phrase
    assert f"{MAX_RESIZED_PIXELS:,}" in doc
