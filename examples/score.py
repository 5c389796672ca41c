#!/usr/bin/env python3
"""Score CSV files with a model exported by `fedmark model export` (or
`fedmark-coordinator model export`), without fedmark.

usage: python3 examples/score.py EXPORT_DIR DATA.csv [DATA.csv ...]
                                 [--holdout FRACTION:SEED] [--scores OUT]

Reads EXPORT_DIR/weights.npy and EXPORT_DIR/pipeline.json, turns each CSV row into the
model's input exactly as the partners did in training, and prints the AUC over the scored rows
of all the files together (the label column must be present). With --holdout only the rows a
partner with that `holdout_fraction` and `holdout_seed` holds out are scored, so the partners'
files give the rows of the federated evaluation, and the AUC the job's report states. With
--scores, writes one score per scored row. Needs numpy; everything else is the standard
library.
"""
import csv
import hashlib
import json
import math
import struct
import sys

import numpy as np


def encode(row, idx, pipe):
    """The model input of one CSV row and the bytes of its holdout key (parsed numerics as
    f64, categorical slots as u32, little-endian), or None when the trainer would skip the
    row."""
    x = np.zeros(pipe["input_dim"])
    numerics, slots = b"", b""
    for col in pipe["columns"]:
        text = row[idx[col["name"]]].strip()
        if col["type"] == "numeric":
            try:
                v = float(text) if "_" not in text else math.nan
            except ValueError:
                return None
            if not math.isfinite(v):
                return None
            numerics += struct.pack("<d", v)
            if col.get("range") is not None:
                v = min(max(v, col["range"][0]), col["range"][1])
            x[col["index"]] = (v - col["mean"]) / col["std"]
        elif col["type"] == "categorical":
            vocab = col["vocabulary"]
            slot = vocab.index(text) if text in vocab else col["other_slot"]
            slots += struct.pack("<I", slot)
            x[col["offset"] + slot] = 1.0
        else:  # hashed
            h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            slots += struct.pack("<I", h % col["buckets"])
            x[col["offset"] + h % col["buckets"]] = 1.0
    return x, numerics + slots


def predict(X, w, model):
    """Probabilities of the positive class for the rows of X."""
    part = {l["name"]: w[l["offset"]:l["offset"] + int(np.prod(l["shape"]))].reshape(l["shape"])
            for l in model["layers"]}
    if model["kind"] == "logistic":
        z = X @ part["w"] + part["b"]
    else:  # mlp, relu hidden layer
        z = np.maximum(X @ part["W1"] + part["b1"], 0.0) @ part["w2"] + part["b2"]
    return 1.0 / (1.0 + np.exp(-z))


def auc(scores, labels):
    """ROC AUC by the rank formula, tied scores sharing their average rank."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    pos = labels.sum()
    neg = len(labels) - pos
    return (ranks[labels == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg)


MASK = (1 << 64) - 1


def is_holdout(key, fraction, seed):
    """Whether the partner holds out the record whose key bytes (see `encode`, then one label
    byte) are `key`: the first 8 bytes of their SHA-256 through the SplitMix64 finaliser of
    fedmark_core::features::is_holdout."""
    row = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    z = (seed ^ (row * 0x9E3779B97F4A7C15)) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    return (z >> 11) / float(1 << 53) < fraction


def main(export_dir, files, holdout=None, scores_out=None):
    with open(f"{export_dir}/pipeline.json") as f:
        pipe = json.load(f)
    w = np.load(f"{export_dir}/{pipe['weights']['file']}")
    label = pipe["label"]
    rows, labels, skipped = [], [], 0
    for data in files:
        with open(data, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            idx = {name: i for i, name in enumerate(header)}
            for row in reader:
                if not row:
                    continue  # a blank line is no record
                encoded = encode(row, idx, pipe) if len(row) == len(header) else None
                y = row[idx[label["column"]]].strip() if encoded is not None else ""
                if encoded is None or y == "":
                    skipped += 1
                    continue
                x, key = encoded
                positive = y == label["positive"]
                if holdout is not None and not is_holdout(key + bytes([positive]), *holdout):
                    continue
                rows.append(x)
                labels.append(1 if y == label["positive"] else 0)
    scores = predict(np.array(rows), w, pipe["model"])
    if scores_out:
        np.savetxt(scores_out, scores, fmt="%.17g")
    print(f"rows {len(rows)} skipped {skipped} round {pipe['round']} "
          f"AUC {auc(scores, np.array(labels)):.12f}")


def parse_args(argv):
    files, holdout, scores_out = [], None, None
    args = iter(argv)
    for a in args:
        if a == "--holdout":
            fraction, _, seed = next(args, "").partition(":")
            try:
                holdout = (float(fraction), int(seed))
            except ValueError:
                sys.exit("--holdout takes FRACTION:SEED, e.g. 0.2:1\n\n" + __doc__)
        elif a == "--scores":
            scores_out = next(args, None)
        elif a.startswith("--"):
            sys.exit(f"unknown option {a}\n\n" + __doc__)
        else:
            files.append(a)
    if len(files) < 2:
        sys.exit(__doc__)
    return files[0], files[1:], holdout, scores_out


if __name__ == "__main__":
    main(*parse_args(sys.argv[1:]))
