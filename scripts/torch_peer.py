"""The PyTorch eager peer of scripts/bench-train: the same networks, batch size, threads and
optimiser as the modelci configs it is run next to, on the same PNG folders.

    python torch_peer.py --data DIR --model mlp|cnn --epochs N --threads T --mode memory|folder

`memory` decodes every image once into tensors and trains from them; `folder` reads the PNG
tree through a Dataset and DataLoader every epoch (two worker processes), as an
ImageFolder pipeline does. Prints one JSON object: samples/s for training and evaluation, and
the seconds spent loading.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

MEAN, STD = 0.1307, 0.3081


def network(kind):
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def listing(root):
    classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    return [(path, label) for label, name in enumerate(classes)
            for path in sorted((Path(root) / name).glob("*.png"))]


def decode(path):
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((pixels - MEAN) / STD).unsqueeze(0)


class Folder(torch.utils.data.Dataset):
    def __init__(self, root):
        self.samples = listing(root)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return decode(path), label


def in_memory(root):
    samples = listing(root)
    images = torch.stack([decode(path) for path, _ in samples])
    labels = torch.tensor([label for _, label in samples])
    return images, labels


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", choices=["mlp", "cnn"], required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mode", choices=["memory", "folder"], default="memory")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = network(args.model)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.001)
    loss_fn = nn.CrossEntropyLoss()

    started = time.perf_counter()
    if args.mode == "memory":
        images, labels = in_memory(args.data / "train")
        count = len(labels)
    else:
        loader = torch.utils.data.DataLoader(Folder(args.data / "train"), batch_size=args.batch_size,
                                             shuffle=True, num_workers=args.threads)
        count = len(loader.dataset)
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for _ in range(args.epochs):
        if args.mode == "memory":
            order = torch.randperm(count)
            batches = ((images[order[i:i + args.batch_size]], labels[order[i:i + args.batch_size]])
                       for i in range(0, count, args.batch_size))
        else:
            batches = loader
        for batch, target in batches:
            optimiser.zero_grad()
            loss = loss_fn(model(batch), target)
            loss.backward()
            optimiser.step()
    train_seconds = time.perf_counter() - started

    test_images, test_labels = in_memory(args.data / "test")
    started = time.perf_counter()
    with torch.no_grad():
        correct = 0
        for i in range(0, len(test_labels), 512):
            logits = model(test_images[i:i + 512])
            correct += (logits.argmax(1) == test_labels[i:i + 512]).sum().item()
    evaluate_seconds = time.perf_counter() - started
    print(json.dumps({
        "train_samples_per_second": count * args.epochs / train_seconds,
        "evaluate_samples_per_second": len(test_labels) / evaluate_seconds,
        "load_seconds": load_seconds,
        "accuracy": correct / len(test_labels),
    }))


if __name__ == "__main__":
    main()
