#!/usr/bin/env python
"""The peer of `receiptlib predict` in scripts/bench_predict.py: the README's plain ONNX Runtime recipe in a
loop, with no receiptlib import. PIL opens each JPEG in draft mode, resizes, normalises; ONNX Runtime (fp32,
batches of 16) gives the logits; the model's own metadata gives classes, preprocessing and the Other rule.

    python scripts/plain_onnx_predict.py data/runs/RUN/fast/model.onnx photos/ --out plain.csv --threads 2
"""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

EXTENSIONS = {".jpg", ".jpeg", ".png"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model")
    p.add_argument("folder")
    p.add_argument("--out", default="plain.csv")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes, size, rule = json.loads(meta["classes"]), int(meta["image_size"]), json.loads(meta["other_rule"])
    mean, std = np.float32(json.loads(meta["mean"])), np.float32(json.loads(meta["std"]))
    thresholds = np.array([rule["thresholds"][c] for c in classes])
    print(f"plain: ready after {time.process_time():.2f} s CPU", file=sys.stderr)

    files = sorted(f for f in Path(args.folder).rglob("*") if f.suffix.lower() in EXTENSIONS)
    with open(args.out, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "label"])
        for start in range(0, len(files), args.batch_size):
            batch = files[start:start + args.batch_size]
            xs = []
            for f in batch:
                img = Image.open(f)
                img.draft("RGB", (size, size))
                xs.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), np.float32))
            x = ((np.stack(xs) / 255 - mean) / std).transpose(0, 3, 1, 2)
            logits = session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]
            top = logits.argmax(1)
            other = logits.max(1) < thresholds[top]
            for f, t, o in zip(batch, top, other):
                writer.writerow([str(f), "Other" if o else classes[t]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
