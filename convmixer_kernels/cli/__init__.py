"""The command-line programs of the model layer, each also a function:
evaluate.py (ImageNet-style top-1/top-5), count.py (parameters and FLOPs), export.py
(ONNX), and args.py, the argparse types they and the examples share."""
