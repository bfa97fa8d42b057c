"""Tree ensembles as plain arrays: posterior forests of a Bayesian Causal Forest, flattened.

stochtree keeps its forests in C++ objects that do not pickle; a registered
model must load anywhere with NumPy alone. :func:`flatten_stochtree` turns a
forest container (one forest per retained posterior draw) into flat node
arrays, :meth:`TreeArrays.predict` evaluates every tree of every draw at once
(level by level, vectorised over rows and trees) and gives exactly what
stochtree predicts (checked in the tests to 1e-12), and :meth:`TreeArrays.shap_trees`
exports the trees in the dictionary form ``shap.TreeExplainer`` accepts, so
explanations use TreeSHAP like every other tree model here.

Split rule (stochtree numeric splits): ``x <= threshold`` goes left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass
class TreeArrays:
    """All trees of all draws; node ids are global, ``left == -1`` marks a leaf."""

    feature: np.ndarray  # (nodes,) int32, -1 at leaves
    threshold: np.ndarray  # (nodes,) float64
    left: np.ndarray  # (nodes,) int32
    right: np.ndarray  # (nodes,) int32
    value: np.ndarray  # (nodes,) float64, leaf values (0 elsewhere)
    roots: np.ndarray  # (trees,) int32, root node of each tree; trees are grouped by draw
    n_draws: int
    trees_per_draw: int
    max_depth: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Sum of each draw's trees for every row: an (n, draws) array."""
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self.max_depth):
            left = self.left[node]
            inner = left >= 0
            if not inner.any():
                break
            go_left = X[rows, np.maximum(self.feature[node], 0)] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, left, self.right[node]), node)
        leaf_values = self.value[node]
        return leaf_values.reshape(n, self.n_draws, self.trees_per_draw).sum(axis=2)

    def shap_trees(self, X_train: np.ndarray, draws: np.ndarray, scale: float) -> list[dict]:
        """Trees of the given draws as ``shap.TreeExplainer`` dictionaries, leaf values times ``scale``.

        Node covers (needed by path-dependent TreeSHAP) are the training rows
        passing through each node, plus a tiny weight on every leaf so that
        leaves no training row reaches stay defined.
        """
        X_train = np.asarray(X_train, dtype=np.float64)
        ends = np.r_[self.roots[1:], len(self.feature)]
        out = []
        rows = np.arange(len(X_train))
        for draw in draws:
            for tree in range(draw * self.trees_per_draw, (draw + 1) * self.trees_per_draw):
                a, b = int(self.roots[tree]), int(ends[tree])
                left = np.where(self.left[a:b] >= 0, self.left[a:b] - a, -1).astype(np.int32)
                right = np.where(self.right[a:b] >= 0, self.right[a:b] - a, -1).astype(np.int32)
                feature = np.where(left >= 0, self.feature[a:b], -2).astype(np.int32)
                threshold = self.threshold[a:b].astype(np.float64)
                cover = np.zeros(b - a)
                node = np.zeros(len(X_train), dtype=np.int64)
                while True:
                    np.add.at(cover, node, 1.0)
                    inner = left[node] >= 0
                    if not inner.any():
                        break
                    go_left = X_train[rows, np.maximum(feature[node], 0)] <= threshold[node]
                    node = np.where(inner, np.where(go_left, left[node], right[node]), node)
                for k in reversed(_order(left, right)):  # children before parents
                    if left[k] >= 0:
                        cover[k] = cover[left[k]] + cover[right[k]]
                    else:
                        cover[k] += 1e-6
                cover = np.maximum(cover, 1e-6)  # nodes a sampler deleted are unreachable but must not be empty
                out.append(
                    {
                        "children_left": left,
                        "children_right": right,
                        "children_default": left.copy(),
                        "features": feature,
                        "thresholds": threshold,
                        "values": (self.value[a:b] * scale)[:, None],
                        "node_sample_weight": cover,
                    }
                )
        return out


def flatten_stochtree(container) -> TreeArrays:
    """Flatten a stochtree ``ForestContainer`` (one forest per retained draw) into :class:`TreeArrays`."""
    data = json.loads(container.dump_json_string())
    forests = sorted((k for k in data if k.startswith("forest_")), key=lambda k: int(k.split("_")[1]))
    features, thresholds, lefts, rights, values, roots = [], [], [], [], [], []
    offset, max_depth, per_draw = 0, 0, None
    for key in forests:
        forest = data[key]
        if per_draw is None:
            per_draw = forest["num_trees"]
        elif forest["num_trees"] != per_draw:
            raise ValueError("every draw must have the same number of trees")
        for t in range(forest["num_trees"]):
            tree = forest[f"tree_{t}"]
            if tree.get("has_categorical_split"):
                raise ValueError("categorical splits are not supported (features are numeric)")
            left = np.asarray(tree["left"], dtype=np.int64)
            right = np.asarray(tree["right"], dtype=np.int64)
            inner = left >= 0
            features.append(np.where(inner, np.asarray(tree["split_index"]), -1))
            thresholds.append(np.asarray(tree["threshold"], dtype=np.float64))
            lefts.append(np.where(inner, left + offset, -1))
            rights.append(np.where(right >= 0, right + offset, -1))
            values.append(np.where(inner, 0.0, np.asarray(tree["leaf_value"], dtype=np.float64)))
            roots.append(offset)
            offset += len(left)
            max_depth = max(max_depth, _depth(left, right))
    return TreeArrays(
        feature=np.concatenate(features).astype(np.int32),
        threshold=np.concatenate(thresholds),
        left=np.concatenate(lefts).astype(np.int32),
        right=np.concatenate(rights).astype(np.int32),
        value=np.concatenate(values),
        roots=np.asarray(roots, dtype=np.int32),
        n_draws=len(forests),
        trees_per_draw=int(per_draw or 0),
        max_depth=max_depth,
    )


def _order(left: np.ndarray, right: np.ndarray) -> list[int]:
    """Nodes reachable from the root (node 0), parents before children (deleted nodes are unreachable)."""
    order, k = [0], 0
    while k < len(order):
        node = order[k]
        if left[node] >= 0:
            order += [int(left[node]), int(right[node])]
        k += 1
    return order


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    depth = np.zeros(len(left), dtype=np.int64)
    for node in _order(left, right):
        if left[node] >= 0:
            depth[left[node]] = depth[right[node]] = depth[node] + 1
    return int(depth.max()) if len(depth) else 0
