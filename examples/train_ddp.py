"""Data-parallel training of a small ConvMixer with synchronized BatchNorm, on the CPU
(gloo) or on GPUs (NCCL):

    torchrun --nproc_per_node=2 examples/train_ddp.py                 # CPU, or one GPU per process
    torchrun --nproc_per_node=2 examples/train_ddp.py --max-steps 5 --checkpoint ddp.pth

The model is get_model("convmixer_64_4") for scikit-learn's digits (1,797 8x8 images,
shipped with scikit-learn: nothing is downloaded), in channels_last, wrapped in
DistributedDataParallel after convert_sync_batchnorm, so the fused mixer blocks normalize
with the statistics of the whole global batch (and on CUDA the other BatchNorms too, as
nn.SyncBatchNorm). bfloat16 autocast runs where the device supports it (CUDA, with
--amp auto). Rank 0 shows a tqdm bar, evaluates on the test split, saves a checkpoint
and checks that get_model loads it back to the same predictions.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import digits  # noqa: E402  (the same data and split)

import convmixer_kernels as cmk  # noqa: E402

MODEL = "convmixer_64_4"
MODEL_KWARGS = dict(in_chans=1, num_classes=10)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                        help="bfloat16 autocast: auto = on CUDA only")
    parser.add_argument("--checkpoint", default="convmixer_digits_ddp.pth")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def setup():
    """(rank, world size, device) of this process, started by torchrun."""
    if "RANK" not in os.environ:
        sys.exit("train_ddp.py: start it with torchrun, e.g. torchrun --nproc_per_node=2 examples/train_ddp.py")
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def accuracy(model, images, labels, device):
    model.eval()
    with torch.no_grad():
        logits = model(images.to(device, memory_format=torch.channels_last))
    return (logits.argmax(1).cpu() == labels).float().mean().item(), logits


def main():
    args = parse_args()
    rank, world, device = setup()
    x_train, y_train, x_test, y_test = digits(args.seed)
    if args.batch_size % world:
        sys.exit(f"train_ddp.py: --batch-size {args.batch_size} must be a multiple of the {world} processes")

    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model = cmk.get_model(MODEL, device=device, **MODEL_KWARGS).train()
    model = cmk.convert_sync_batchnorm(model).to(memory_format=torch.channels_last)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")

    sampler = DistributedSampler(TensorDataset(x_train, y_train), num_replicas=world, rank=rank,
                                 shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size // world, sampler=sampler)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=1e-4)
    total = args.epochs * len(loader)
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total)

    step = 0
    bar = tqdm(total=total, desc=f"train ({world} processes)", disable=rank != 0, file=sys.stderr)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for images, labels in loader:
            if step == total:
                break
            images = images.to(device, memory_format=torch.channels_last)
            labels = labels.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(ddp(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()

    if rank == 0:
        acc, logits = accuracy(model, x_test, y_test, device)
        print(f"steps: {step}; test accuracy: {100 * acc:.2f}%")
        torch.save({"state_dict": model.state_dict()}, args.checkpoint)
        reloaded = cmk.get_model(MODEL, pretrained=args.checkpoint, device=device, **MODEL_KWARGS)
        reloaded = reloaded.to(memory_format=torch.channels_last)
        _, logits_reloaded = accuracy(reloaded, x_test, y_test, device)
        same = torch.equal(logits_reloaded, logits)
        print(f"saved {args.checkpoint}; get_model loads it back to the same predictions: {same}")
        if not same:
            sys.exit(1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
