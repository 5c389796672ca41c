#!/usr/bin/env python3
"""Score a CSV with a model exported by `fedmark-coordinator model export`, without fedmark.

usage: python3 examples/score.py EXPORT_DIR DATA.csv [SCORES_OUT]

Reads EXPORT_DIR/weights.npy and EXPORT_DIR/pipeline.json, turns each CSV row into the
model's input exactly as the partners did in training, prints the AUC over the rows (the label
column must be present) and, with SCORES_OUT, writes one score per scored row.
Needs numpy; everything else is the standard library.
"""
import csv
import hashlib
import json
import math
import sys

import numpy as np


def encode(row, idx, pipe):
    """The model input of one CSV row, or None when the trainer would skip the row."""
    x = np.zeros(pipe["input_dim"])
    for col in pipe["columns"]:
        text = row[idx[col["name"]]].strip()
        if col["type"] == "numeric":
            try:
                v = float(text) if "_" not in text else math.nan
            except ValueError:
                return None
            if not math.isfinite(v):
                return None
            x[col["index"]] = (v - col["mean"]) / col["std"]
        elif col["type"] == "categorical":
            vocab = col["vocabulary"]
            x[col["offset"] + (vocab.index(text) if text in vocab else col["other_slot"])] = 1.0
        else:  # hashed
            h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            x[col["offset"] + h % col["buckets"]] = 1.0
    return x


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


def main(export_dir, data, scores_out=None):
    with open(f"{export_dir}/pipeline.json") as f:
        pipe = json.load(f)
    w = np.load(f"{export_dir}/{pipe['weights']['file']}")
    label = pipe["label"]
    rows, labels, skipped = [], [], 0
    with open(data, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        idx = {name: i for i, name in enumerate(header)}
        for row in reader:
            x = encode(row, idx, pipe) if len(row) == len(header) else None
            y = row[idx[label["column"]]] if x is not None else ""
            if x is None or y == "":
                skipped += 1
                continue
            rows.append(x)
            labels.append(1 if y == label["positive"] else 0)
    scores = predict(np.array(rows), w, pipe["model"])
    if scores_out:
        np.savetxt(scores_out, scores, fmt="%.17g")
    print(f"rows {len(rows)} skipped {skipped} round {pipe['round']} "
          f"AUC {auc(scores, np.array(labels)):.12f}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
