"""Top-5 ImageNet classes of an image with a ConvMixer.

    python examples/predict.py IMAGE                          # the released convmixer_768_32 weights
    python examples/predict.py IMAGE --model convmixer_1536_20 --checkpoint convmixer_1536_20_ks9_p7.pth.tar
"""

import argparse

from convmixer_kernels.cli.args import existing_file, model_name, positive_int
from convmixer_kernels.models.inference import inference_model
from convmixer_kernels.models import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=existing_file("an image file"), help="an image file")
    parser.add_argument("--model", default="convmixer_768_32", type=model_name,
                        help="a config name (see convmixer_kernels.models.list_models())")
    parser.add_argument("--checkpoint", type=existing_file("a checkpoint file"),
                        help="weights in the official, timm or mmpretrain format; default: the released ones")
    parser.add_argument("--num-classes", type=positive_int, help="override the config's class count")
    parser.add_argument("--topk", type=positive_int, default=5)
    args = parser.parse_args()

    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    # Only an absent --checkpoint means the released weights; an empty one is refused above.
    model = get_model(args.model, pretrained=True if args.checkpoint is None else args.checkpoint, **overrides)
    result = inference_model(model, args.image, topk=args.topk)
    print(f"{args.image}: {args.model}")
    for rank, entry in enumerate(result["topk"], 1):
        print(f"{rank:2d}. {entry['class']:<30s} (class {entry['label']:4d})  {entry['score']:.4f}")


if __name__ == "__main__":
    main()
