"""Data loading cost: ms per image for read_image + the training transform (one process, one thread).

Compares resize-first (our preset) against rotate-first, with and without JPEG draft mode, at image
sizes 224 and 160, on receipt-like JPEGs made here (384x512 and 1000x1333, portrait like phone photos).

    .venv/bin/python scripts/bench_data.py [--n 20] [--repeat 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torchvision import transforms as T

from receiptlib import data as D


def make_photo(path: Path, size: tuple[int, int], seed: int) -> None:
    """A receipt-like photo: textured background, a tilted white receipt with lines of 'text', mild noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    bg = rng.integers(60, 140, (h // 8, w // 8, 3), dtype=np.uint8)
    img = Image.fromarray(bg).resize((w, h), Image.BILINEAR)
    paper = Image.new("RGB", (int(w * 0.6), int(h * 0.8)), (245, 243, 236))
    draw = ImageDraw.Draw(paper)
    y = 10
    while y < paper.height - 10:
        x0 = int(rng.integers(5, paper.width // 4))
        draw.text((x0, y), "ITEM %05d   %6.2f" % (rng.integers(1e5), rng.random() * 100), fill=(20, 20, 20))
        y += max(8, h // 60)
    paper = paper.rotate(float(rng.uniform(-20, 20)), expand=True, fillcolor=(0, 0, 0))
    mask = paper.convert("L").point(lambda v: 255 if v > 0 else 0)
    img.paste(paper, (int(w * 0.15), int(h * 0.05)), mask)
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    a = np.asarray(img).astype(np.int16) + rng.normal(0, 4, (h, w, 3)).astype(np.int16)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90)


def rotate_first_transform(image_size: int):
    """The slow order: rotate the full-resolution photo, then shrink it."""
    return T.Compose([T.RandomRotation(30.0, interpolation=T.InterpolationMode.BILINEAR), T.Resize((image_size, image_size)),
                      T.ColorJitter(0.4, 0.4, 0.4, 0.1), T.ToTensor(), T.Normalize(D.IMAGENET_MEAN, D.IMAGENET_STD)])


def ms_per_image(files, transform, draft: bool, image_size: int, repeat: int) -> tuple[float, float]:
    """Best wall-clock and best CPU ms per image over `repeat` passes (the machine may be shared: CPU time
    of this one-thread process is the figure least disturbed by other work)."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        for f in files:
            transform(D.read_image(f, draft_size=image_size if draft else None))
        wall = min(wall, (time.perf_counter() - t0) / len(files) * 1000)
        cpu = min(cpu, (time.process_time() - c0) / len(files) * 1000)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="photos per size")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'photo':>10} {'size':>4} {'order':>12} {'draft':>5} {'cpu ms':>7} {'wall ms':>8}  (per image)")
        for wh in [(384, 512), (1000, 1333)]:
            files = []
            for i in range(args.n):
                files.append(Path(tmp) / f"{wh[0]}x{wh[1]}_{i}.jpg")
                make_photo(files[-1], wh, seed=i)
            for image_size in (224, 160):
                for order, make in [("resize-first", lambda s: D.train_transform(image_size=s)),
                                    ("rotate-first", rotate_first_transform)]:
                    for draft in (True, False):
                        wall, cpu = ms_per_image(files, make(image_size), draft, image_size, args.repeat)
                        print(f"{wh[0]}x{wh[1]:<5} {image_size:>4} {order:>12} {str(draft):>5} {cpu:7.1f} {wall:8.1f}",
                              flush=True)
            wall, cpu = ms_per_image(files, D.eval_transform(image_size=224), True, 224, args.repeat)
            print(f"{wh[0]}x{wh[1]:<5} {224:>4} {'eval':>12} {'True':>5} {cpu:7.1f} {wall:8.1f}", flush=True)


if __name__ == "__main__":
    main()
