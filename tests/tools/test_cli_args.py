"""Every command-line argument is checked when parsed: a wrong one exits with status 2 and
a message naming the flag and what it expects; nothing falls back to a default (an empty
--checkpoint "" from an unset shell variable is refused, not read as "no checkpoint")."""

import os
import subprocess
import sys

import pytest
import torch

from convmixer_kernels.cli import count, evaluate, export
from convmixer_kernels.models import get_model
from tests.harness import ROOT



@pytest.fixture
def files(tmp_path):
    """A checkpoint, a one-class data folder and a plain file, for the arguments that need them."""
    checkpoint = tmp_path / "ckpt.pth"
    torch.save(get_model("convmixer_64_4").state_dict(), checkpoint)
    (tmp_path / "val" / "a").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("x")
    return {"ckpt": str(checkpoint), "val": str(tmp_path / "val"), "file": str(tmp_path / "notes.txt"),
            "missing": str(tmp_path / "missing"), "dir": str(tmp_path)}


def parse_error(main, argv, capsys) -> str:
    """The error line argparse prints for `argv`; fails unless main exits with status 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


EVALUATE_BASE = {"--model": "convmixer_64_4", "--checkpoint": "{ckpt}", "--data": "{val}"}
EVALUATE_CASES = [
    ("--checkpoint", "", "argument --checkpoint: is empty; give the path of a checkpoint file"),
    ("--checkpoint", "{missing}", "argument --checkpoint: '{missing}' does not exist"),
    ("--checkpoint", "{dir}", "argument --checkpoint: '{dir}' is a directory"),
    ("--data", "", "argument --data: is empty"),
    ("--data", "{missing}", "argument --data: '{missing}' does not exist; give the path of the validation directory"),
    ("--data", "{file}", "argument --data: '{file}' is a file"),
    ("--class-map", "{missing}", "argument --class-map: '{missing}' does not exist; give the path of a class map file"),
    ("--batch-size", "0", "argument --batch-size: must be a positive integer, got '0'"),
    ("--batch-size", "x", "argument --batch-size: must be an integer, got 'x'"),
    ("--workers", "-1", "argument --workers: must be 0 or a positive integer, got '-1'"),
    ("--num-classes", "0", "argument --num-classes: must be a positive integer, got '0'"),
    ("--backend", "CUDA", "argument --backend: invalid choice: 'CUDA'"),
    ("--device", "gpu0", "argument --device: 'gpu0' is not a torch device"),
    ("--model", "convmixer_99", "argument --model: unknown ConvMixer model 'convmixer_99'; known: "),
]


@pytest.mark.parametrize("flag, value, message", EVALUATE_CASES)
def test_evaluate_arguments(files, capsys, flag, value, message):
    args = {**EVALUATE_BASE, flag: value}
    argv = [part.format(**files) for pair in args.items() for part in pair]
    assert message.format(**files) in parse_error(evaluate.main, argv, capsys)


def test_evaluate_cuda_device_without_cuda(files, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv = ["--model", "convmixer_64_4", "--checkpoint", files["ckpt"], "--data", files["val"], "--device", "cuda"]
    assert "no CUDA device is available here; use --device cpu" in parse_error(evaluate.main, argv, capsys)


@pytest.mark.parametrize("value, message", [
    ("0", "must be a positive integer, got '0'"),
    ("-224", "must be a positive integer, got '-224'"),
    ("1", "must be at least the patch size 2, got 1"),
])
def test_count_input_size(capsys, value, message):
    error = parse_error(count.main, ["--model", "convmixer_64_4", "--input-size", value], capsys)
    assert error.startswith("python -m convmixer_kernels.cli.count: error: argument --input-size:") and message in error


def test_count_uses_the_size_it_is_given(capsys):
    count.main(["--model", "convmixer_64_4", "--input-size", "64"])
    assert " 64 " in capsys.readouterr().out
    with pytest.raises(ValueError, match="input_size must be at least the patch size 2, got 0"):
        count.count_model("convmixer_64_4", input_size=0)


EXPORT_CASES = [
    (["--checkpoint", ""], "argument --checkpoint: is empty"),
    (["--checkpoint", "{missing}"], "argument --checkpoint: '{missing}' does not exist"),
    (["--checkpoint", "{ckpt}", "--pretrained"], "argument --pretrained: not allowed with argument --checkpoint"),
    (["--input-size", "0"], "argument --input-size: must be a positive integer, got '0'"),
    (["--opset", "-1"], "argument --opset: must be a positive integer, got '-1'"),
    (["--num-classes", "0"], "argument --num-classes: must be a positive integer"),
    (["--output", ""], "argument --output: is empty; give the path of the file to write"),
    (["--output", "{dir}"], "argument --output: cannot write '{dir}': it is a directory"),
    (["--output", "{missing}/m.onnx"], "argument --output: cannot write '{missing}/m.onnx': No such file or directory"),
    (["--output", "{file}/m.onnx"], "argument --output: cannot write '{file}/m.onnx': Not a directory"),
]


@pytest.mark.parametrize("extra, message", EXPORT_CASES)
def test_export_arguments(files, capsys, extra, message):
    argv = ["--model", "convmixer_64_4", "--output", os.path.join(files["dir"], "m.onnx")]
    argv += [part.format(**files) for part in extra]
    assert message.format(**files) in parse_error(export.main, argv, capsys)
    assert not os.path.exists(os.path.join(files["dir"], "m.onnx"))  # refused before anything is written


def test_export_without_onnxscript_names_the_extra(files, capsys, monkeypatch):
    # None in sys.modules makes `import onnxscript` fail, as where it is not installed.
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    argv = ["--model", "convmixer_64_4", "--checkpoint", files["ckpt"], "--output", os.path.join(files["dir"], "m.onnx")]
    error = parse_error(export.main, argv, capsys)
    assert "ONNX export needs" in error and "onnxscript" in error and "pip install 'convmixer_kernels[onnx]'" in error
    with pytest.raises(ImportError, match=r"onnxscript.*\[onnx\] extra"):
        export.export_onnx(get_model("convmixer_64_4"), os.path.join(files["dir"], "m.onnx"))


def test_export_onnx_checks_the_path_before_exporting(files, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")

    def must_not_run(*args, **kwargs):
        raise AssertionError("torch.onnx.export ran although the output cannot be written")

    monkeypatch.setattr(torch.onnx, "export", must_not_run)
    with pytest.raises(NotADirectoryError, match="cannot write .*notes.txt/m.onnx': Not a directory"):
        export.export_onnx(get_model("convmixer_64_4"), os.path.join(files["file"], "m.onnx"))


def test_writable_check_keeps_an_existing_file(tmp_path):
    from convmixer_kernels.cli.args import check_writable

    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"keep")
    check_writable(str(existing))
    check_writable(str(tmp_path / "new.onnx"))
    assert existing.read_bytes() == b"keep" and not (tmp_path / "new.onnx").exists()


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_predict_refuses_an_empty_checkpoint_and_a_bad_topk(files):
    run = run_example("predict.py", files["file"], "--model", "convmixer_64_4", "--checkpoint", "")
    assert run.returncode == 2 and "argument --checkpoint: is empty" in run.stderr
    run = run_example("predict.py", files["file"], "--model", "convmixer_64_4", "--checkpoint", files["ckpt"],
                      "--topk", "0")
    assert run.returncode == 2 and "argument --topk: must be a positive integer, got '0'" in run.stderr


@pytest.mark.parametrize("script, args, message", [
    ("swap_in_existing_model.py", ["--dim", "0"], "argument --dim: must be a positive integer, got '0'"),
    ("swap_in_existing_model.py", ["--device", "gpu"], "argument --device: 'gpu' is not a torch device"),
    ("train_digits.py", ["--epochs", "-1"], "argument --epochs: must be a positive integer, got '-1'"),
    ("train_digits.py", ["--lr", "nan"], "argument --lr: must be a positive finite number, got 'nan'"),
])
def test_examples_check_their_arguments(script, args, message):
    run = run_example(script, *args)
    assert run.returncode == 2 and message in run.stderr, run.stderr
