#!/usr/bin/env python3
"""Score CSV files with a model exported by `fedmark model export` (or
`fedmark-coordinator model export`, or `fedmark-sim --export`), without fedmark.

usage: python3 examples/score.py EXPORT_DIR DATA.csv [DATA.csv ...]
                                 [--id COLUMN] [--scores OUT] [--skipped OUT]
                                 [--holdout FRACTION:SEED] [--xgboost]

Reads EXPORT_DIR/pipeline.json and the model file it names (weights.npy for a linear model
or an MLP, model.json for boosted trees) and turns each CSV row into the model's input
exactly as the partners did in training. A boosted model's numeric inputs are the clamped
values themselves (mean 0, std 1); each tree sends a row to bin b of a numeric feature when
b of the feature's thresholds are below the value, and to its slot's bin for a categorical
one. The label column is not needed: an
audience is scored as it is. When every file has it, the script also prints the AUC over the
scored rows that have a label.

--id COLUMN      the identifier column, copied into --scores and the skipped-rows report
--scores OUT     write `id,score,decile` (with --id) or `row,score,decile` (without: the
                 record's 1-based position in the files taken in order as one table), one line
                 per scored row in input order; decile 1 holds the highest scores (of n scored
                 rows, a row beaten by h scores is in decile 1 + floor(10 h / n), so ties share
                 a decile), as `fedmark score` computes it
--skipped OUT    write every row that could not be scored as `file,line,id,reason`; without
                 it the first 10 are printed on stderr. A row is skipped, never imputed, when
                 its field count differs from the header's, a numeric column the model uses is
                 not a number (the column is named), or --id is given and its field is empty
--xgboost        (boosted trees) score with EXPORT_DIR/model.xgb.json, the same trees in
                 XGBoost's JSON format, instead of model.json: XGBoost keeps leaves and
                 thresholds as float32, so these scores agree with model.json's to about
                 1e-6, not 1e-9
--holdout F:S    score only the rows a partner with that `holdout_fraction` and `holdout_seed`
                 holds out (the split hashes each record's parsed values and label, so the
                 label column is needed), so the partners' files give the rows of the
                 federated evaluation and the AUC the job's report states

Needs numpy; everything else is the standard library.
"""
import csv
import hashlib
import json
import math
import struct
import sys

import numpy as np

SKIPPED_SHOWN = 10


class Skip(Exception):
    """A row that cannot be scored, with the reason (as `fedmark score` words it)."""


def encode(row, idx, pipe):
    """The model input of one CSV row and the bytes of its holdout key (parsed numerics as
    f64, categorical slots as u32, little-endian); raises Skip when the trainer would skip
    the row."""
    x = np.zeros(pipe["input_dim"])
    numerics, slots = b"", b""
    for col in pipe["columns"]:
        text = row[idx[col["name"]]].strip()
        if col["type"] == "numeric":
            try:
                v = float(text) if "_" not in text else math.nan
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise Skip(f"column `{col['name']}` not a number")
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


def tree_inputs(X, pipe):
    """A boosted model's inputs per row: the numeric values, then each categorical column's
    slot (its one-hot position)."""
    cols = []
    for col in pipe["columns"]:
        if col["type"] == "numeric":
            cols.append(X[:, col["index"]])
        else:
            width = col["width"]
            cols.append(np.argmax(X[:, col["offset"]:col["offset"] + width], axis=1))
    return cols


def predict_trees(X, model, pipe):
    """Probabilities from a model.json (format fedmark-gbdt/1): base margin plus, tree by
    tree, the value of the leaf each row reaches, added in tree order as fedmark adds them."""
    if (model.get("format"), model.get("version")) != ("fedmark-gbdt", 1):
        sys.exit("model.json: not a fedmark-gbdt version 1 model")
    inputs = tree_inputs(X, pipe)
    bins = []
    for feature, values in zip(model["features"], inputs):
        edges = feature["edges"]
        if edges["kind"] == "numeric":
            # bin b holds (t[b-1], t[b]]: b = the number of thresholds below the value
            bins.append(np.searchsorted(np.array(edges["thresholds"], dtype=float), values,
                                        side="left"))
        else:
            bins.append(values.astype(int))
    bins = np.array(bins).T if bins else np.zeros((X.shape[0], 0), dtype=int)
    margin = np.full(X.shape[0], float(model["base_margin"]))
    for nodes in model["trees"]:
        leaf = np.zeros(X.shape[0], dtype=int)
        for _ in range(len(nodes)):  # children come after parents: at most one step per node
            done = True
            for i in np.unique(leaf):
                node = nodes[i]
                if node["node"] == "leaf":
                    continue
                done = False
                at = leaf == i
                b = bins[at, node["feature"]]
                rule = node["rule"]
                if rule["kind"] == "numeric":
                    left = b <= rule["bin"]
                else:
                    left = np.isin(b, rule["left"])
                leaf[at] = np.where(left, node["left"], node["right"])
            if done:
                break
        margin = margin + np.array([nodes[i]["value"] for i in leaf], dtype=float)
    return sigmoid(margin)


def predict_xgboost(X, doc, pipe):
    """Probabilities from the model.xgb.json fedmark writes (XGBoost's JSON model format),
    read as XGBoost reads it: float32 thresholds ("value < condition" goes left), listed
    categories go right, float32 leaves and base score."""
    learner = doc["learner"]
    inputs = tree_inputs(X, pipe)
    base = np.float32(float(learner["learner_model_param"]["base_score"].strip("[]")))
    margin = np.full(X.shape[0], math.log(float(base) / (1.0 - float(base))))
    for tree in learner["gradient_booster"]["model"]["trees"]:
        left_of, right_of = tree["left_children"], tree["right_children"]
        cat_at = dict(zip(tree["categories_nodes"],
                          zip(tree["categories_segments"], tree["categories_sizes"])))
        node = np.zeros(X.shape[0], dtype=int)
        for _ in range(len(left_of)):
            inner = [i for i in np.unique(node) if left_of[i] != -1]
            if not inner:
                break
            for i in inner:
                at = node == i
                v = inputs[tree["split_indices"][i]][at]
                if tree["split_type"][i] == 0:
                    left = v.astype(np.float32) < np.float32(tree["split_conditions"][i])
                else:
                    seg, size = cat_at[i]
                    left = ~np.isin(v.astype(int), tree["categories"][seg:seg + size])
                node[at] = np.where(left, left_of[i], right_of[i])
        values = np.array(tree["split_conditions"], dtype=np.float32)
        margin = margin + values[node].astype(float)
    return sigmoid(margin)


def sigmoid(z):
    """The logistic function as fedmark computes it (stable for any z)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def deciles(scores):
    """Decile 1 (highest scores) to 10: 1 + floor(10 h / n), h the scores strictly higher."""
    n = len(scores)
    higher = n - np.searchsorted(np.sort(scores), scores, side="right")
    return 1 + (10 * higher) // max(n, 1)


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


def read_rows(files, pipe, id_column, holdout, on_skip):
    """Yields (key, x, label) per scored row, in input order; label is None without a label
    column. Calls on_skip(file, line, id, reason) for each row it cannot score."""
    label = pipe["label"]["column"]
    position = 0
    for data in files:
        with open(data, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                sys.exit(f"{data}: no header row")
            idx = {name: i for i, name in enumerate(header)}
            needed = [c["name"] for c in pipe["columns"]] + ([id_column] if id_column else [])
            for name in needed:
                if name not in idx:
                    what = "the identifier column (--id)" if name == id_column else \
                        "a column the model uses"
                    sys.exit(f"{data}: lacks the column `{name}`, {what}")
            label_at = idx.get(label)
            if holdout is not None and label_at is None:
                sys.exit(f"{data}: --holdout needs the label column `{label}` "
                         "(the partners' split hashes it)")
            previous_line = reader.line_num
            for row in reader:
                line, previous_line = previous_line + 1, reader.line_num
                if not row:
                    continue  # a blank line is no record
                position += 1
                ident = row[idx[id_column]] if id_column and idx[id_column] < len(row) else ""
                try:
                    if len(row) != len(header):
                        raise Skip("malformed record")
                    if id_column and not ident.strip():
                        raise Skip("empty identifier")
                    x, key = encode(row, idx, pipe)
                    y = row[label_at].strip() if label_at is not None else None
                    if holdout is not None and y == "":
                        raise Skip("empty label")
                except Skip as reason:
                    on_skip(data, line, ident, str(reason))
                    continue
                if holdout is not None:
                    key += bytes([y == pipe["label"]["positive"]])
                    if not is_holdout(key, *holdout):
                        continue
                yield (ident if id_column else position), x, y


def main(export_dir, files, holdout=None, id_column=None, scores_out=None, skipped_out=None,
         xgboost=False):
    with open(f"{export_dir}/pipeline.json") as f:
        pipe = json.load(f)
    trees = pipe["model"]["kind"] == "gbdt"
    if xgboost and not trees:
        sys.exit("--xgboost scores a boosted model's model.xgb.json; this export is a "
                 f"{pipe['model']['kind']} model")
    if trees:
        name = "model.xgb.json" if xgboost else pipe["weights"]["file"]
        with open(f"{export_dir}/{name}") as f:
            w = json.load(f)
    else:
        w = np.load(f"{export_dir}/{pipe['weights']['file']}")
    skipped = []

    def on_skip(data, line, ident, reason):
        skipped.append((data, line, ident, reason))

    keys, rows, labels = [], [], []
    for key, x, y in read_rows(files, pipe, id_column, holdout, on_skip):
        keys.append(key)
        rows.append(x)
        labels.append(y)
    X = np.array(rows).reshape(len(rows), pipe["input_dim"])
    if not trees:
        scores = predict(X, w, pipe["model"])
    elif xgboost:
        scores = predict_xgboost(X, w, pipe)
    else:
        scores = predict_trees(X, w, pipe)
    if scores_out:
        with open(scores_out, "w", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(["id" if id_column else "row", "score", "decile"])
            for key, s, d in zip(keys, scores, deciles(scores)):
                out.writerow([key, repr(float(s)), int(d)])
    if skipped_out:
        with open(skipped_out, "w", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(["file", "line", "id", "reason"])
            out.writerows(skipped)
    else:
        for data, line, ident, reason in skipped[:SKIPPED_SHOWN]:
            who = f", id {ident!r}" if id_column else ""
            print(f"skipped {data} line {line}{who}: {reason}", file=sys.stderr)
        if len(skipped) > SKIPPED_SHOWN:
            print(f"... and {len(skipped) - SKIPPED_SHOWN} more skipped rows "
                  "(--skipped FILE lists them all)", file=sys.stderr)
    summary = f"rows {len(rows)} skipped {len(skipped)} round {pipe['round']}"
    if labels and all(y is not None for y in labels):
        labelled = np.array([y != "" for y in labels])
        positive = np.array([1 if y == pipe["label"]["positive"] else 0 for y in labels])
        unlabelled = int((~labelled).sum())
        summary += f" AUC {auc(scores[labelled], positive[labelled]):.12f}"
        if unlabelled:
            summary += f" ({unlabelled} rows without a label left out of the AUC)"
    print(summary)


def parse_args(argv):
    files, options = [], {}
    flags = {"--holdout": "holdout", "--id": "id_column", "--scores": "scores_out",
             "--skipped": "skipped_out"}
    args = iter(argv)
    for a in args:
        if a == "--xgboost":
            options["xgboost"] = True
        elif a in flags:
            value = next(args, None)
            if value is None:
                sys.exit(f"{a} needs a value\n\n" + __doc__)
            options[flags[a]] = value
        elif a.startswith("--"):
            sys.exit(f"unknown option {a}\n\n" + __doc__)
        else:
            files.append(a)
    if len(files) < 2:
        sys.exit(__doc__)
    if "holdout" in options:
        fraction, _, seed = options["holdout"].partition(":")
        try:
            options["holdout"] = (float(fraction), int(seed))
        except ValueError:
            sys.exit("--holdout takes FRACTION:SEED, e.g. 0.2:1\n\n" + __doc__)
    return files[0], files[1:], options


if __name__ == "__main__":
    export, data_files, opts = parse_args(sys.argv[1:])
    main(export, data_files, **opts)
