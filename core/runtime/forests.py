"""Tree ensembles as plain arrays: LightGBM boosters and the posterior forests of a Bayesian Causal Forest.

stochtree keeps its forests in C++ objects that do not pickle, and a call into
LightGBM or stochtree costs tens of microseconds to milliseconds of fixed
overhead, which a served patient pays once per model: 101 models (a champion
and its 100 bootstrap refits) or 200 posterior draws per outcome. Flattened
into node arrays, all trees of all models are evaluated at once:
:meth:`TreeArrays.predict` walks every tree level by level, vectorised over
rows and trees (only trees that have not reached a leaf take the next step),
and sums each model's ("slot's") trees. :func:`flatten_stochtree` gives exactly
what stochtree predicts and :func:`flatten_lightgbm` what ``Booster.predict``
predicts (both checked in the tests to 1e-12). For trees without missing-value
rules (stochtree's), :meth:`TreeArrays.predict_compiled` walks the same arrays
in a compiled loop (numba): the same numbers to 1e-12, for one patient or 10^5
(a BCF batch of 10^5 patients in seconds, without parsing stochtree's JSON).
:meth:`TreeArrays.shap_trees`
exports trees in the dictionary form ``shap.TreeExplainer`` accepts, so BCF
explanations use TreeSHAP like every other tree model here.

Split rules. stochtree (numeric splits): ``x <= threshold`` goes left.
LightGBM (numerical splits, ``decision_type <=``): a missing value (NaN, or
zero when the node's ``missing_type`` is ``Zero``) goes the node's default
direction; with ``missing_type`` ``None`` NaN counts as 0; otherwise
``x <= threshold`` goes left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LightGBM's missing-value handling per node (``missing_type`` in its model dump).
MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2
_MISSING_CODES = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}
_ZERO_THRESHOLD = 1e-35  # LightGBM's kZeroThreshold


@dataclass
class TreeArrays:
    """All trees of several models; node ids are global, ``left == -1`` marks a leaf.

    Trees are grouped by slot (a model, or a posterior draw): slot ``k`` owns trees
    ``slot_starts[k]`` up to the next slot's first tree.
    """

    feature: np.ndarray  # (nodes,) intp, -1 at leaves
    threshold: np.ndarray  # (nodes,) float64
    left: np.ndarray  # (nodes,) intp
    right: np.ndarray  # (nodes,) intp
    value: np.ndarray  # (nodes,) float64, leaf values (0 elsewhere)
    roots: np.ndarray  # (trees,) intp, root node of each tree
    slot_starts: np.ndarray  # (slots,) intp, first tree of each slot
    max_depth: int
    n_draws: int = 0  # stochtree: retained posterior draws (= slots)
    trees_per_draw: int = 0
    default_left: np.ndarray | None = None  # LightGBM: (nodes,) bool
    missing_type: np.ndarray | None = None  # LightGBM: (nodes,) int8, MISSING_* codes

    def __post_init__(self) -> None:
        inner = self.left[self.roots] >= 0
        self._inner_trees = np.flatnonzero(inner)  # trees that are more than a leaf
        self._root_values = self.value[self.roots]
        general = self.missing_type is not None and bool(np.any(self.missing_type != MISSING_NONE))
        self._general_missing = general

    @property
    def n_slots(self) -> int:
        return len(self.slot_starts)

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_inner_trees", "_root_values", "_general_missing", "_compiled"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__post_init__()

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf value every tree gives every row: an (n, trees) array."""
        X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        trees = len(self.roots)
        if self.missing_type is not None and not self._general_missing and np.isnan(X).any():
            X = np.where(np.isnan(X), 0.0, X)  # LightGBM's missing_type None: NaN counts as 0
        flat = X.ravel()
        node = np.tile(self.roots, n)
        active = (np.arange(n)[:, None] * trees + self._inner_trees[None, :]).ravel()
        rows = active // trees
        for _ in range(self.max_depth):
            if active.size == 0:
                break
            current = node[active]
            go_left = self._go_left(flat[rows * d + self.feature[current]], current)
            child = np.where(go_left, self.left[current], self.right[current])
            node[active] = child
            inner = self.left[child] >= 0
            active, rows = active[inner], rows[inner]
        return self.value[node].reshape(n, trees)

    def _go_left(self, x: np.ndarray, node: np.ndarray) -> np.ndarray:
        if not self._general_missing:
            return x <= self.threshold[node]
        kind = self.missing_type[node]
        nan = np.isnan(x)
        x = np.where(nan & (kind != MISSING_NAN), 0.0, x)
        missing = ((kind == MISSING_ZERO) & (np.abs(x) <= _ZERO_THRESHOLD)) | ((kind == MISSING_NAN) & nan)
        return np.where(missing, self.default_left[node], x <= self.threshold[node])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Sum of each slot's trees for every row: an (n, slots) array."""
        values = self.leaves(X)
        if self.trees_per_draw and self.n_draws * self.trees_per_draw == len(self.roots):
            return values.reshape(len(values), self.n_draws, self.trees_per_draw).sum(axis=2)
        return np.add.reduceat(values, self.slot_starts, axis=1)

    def take_draws(self, draws: np.ndarray) -> TreeArrays:
        """The posterior draws ``draws`` (indices, in order) of a stochtree forest: what :func:`flatten_stochtree` gives for them."""
        if not self.trees_per_draw or self.n_draws * self.trees_per_draw != len(self.roots):
            raise ValueError("take_draws needs a stochtree forest (the same number of trees in every draw)")
        draws = np.asarray(draws, dtype=np.intp)
        ends = np.r_[self.roots[self.trees_per_draw :: self.trees_per_draw], len(self.feature)]  # node after each draw's last
        starts, stops = self.roots[draws * self.trees_per_draw], ends[draws]
        sizes = stops - starts
        shift = np.repeat(np.cumsum(np.r_[0, sizes[:-1]]) - starts, sizes)  # new node id = old id + shift
        keep = np.repeat(starts, sizes) + (np.arange(sizes.sum()) - np.repeat(np.cumsum(np.r_[0, sizes[:-1]]), sizes))
        trees = (draws[:, None] * self.trees_per_draw + np.arange(self.trees_per_draw)).ravel()
        tree_shift = np.repeat(np.cumsum(np.r_[0, sizes[:-1]]) - starts, self.trees_per_draw)
        left, right = self.left[keep], self.right[keep]
        return TreeArrays(
            feature=self.feature[keep],
            threshold=self.threshold[keep],
            left=np.where(left >= 0, left + shift, -1),
            right=np.where(right >= 0, right + shift, -1),
            value=self.value[keep],
            roots=self.roots[trees] + tree_shift,
            slot_starts=np.arange(len(draws), dtype=np.intp) * self.trees_per_draw,
            max_depth=self.max_depth,
            n_draws=len(draws),
            trees_per_draw=self.trees_per_draw,
        )

    def predict_compiled(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """:meth:`predict` in a compiled loop: every row's walk down every tree, summed by slot.

        Only for trees without missing-value rules (stochtree's; LightGBM's go
        through :meth:`predict`). A row's sums do not depend on the other rows
        of the batch: a patient gets the same numbers alone or among 10^5.
        ``threads``: the rows split over that many threads (the compiled loop
        releases the GIL) for a batch job; a serving worker uses one.
        """
        if self.missing_type is not None:
            raise ValueError("predict_compiled walks trees without missing-value rules (stochtree's), not LightGBM's")
        X = np.ascontiguousarray(X, dtype=np.float64)
        compiled = getattr(self, "_compiled", None)
        if compiled is None:
            compiled = self._compiled = _compile_walk(self)
        c = compiled
        kernel = _kernel()

        def walk(part: np.ndarray) -> np.ndarray:
            return kernel(
                part, c.constant, c.table_features, c.cuts, c.cut_starts, c.tables, c.table_starts,
                c.children, c.feature, c.threshold, self.value, c.roots, c.depth, c.slot, WALK_BLOCK,
            )  # fmt: skip

        parts = max(1, min(int(threads), len(X) // (16 * WALK_BLOCK)))
        if parts == 1:
            return walk(X)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(parts) as pool:
            return np.vstack(list(pool.map(walk, np.array_split(X, parts))))

    def shap_trees(self, X_train: np.ndarray, draws: np.ndarray, scale: float) -> list[dict]:
        """Trees of the given draws as ``shap.TreeExplainer`` dictionaries, leaf values times ``scale``.

        Node covers (needed by path-dependent TreeSHAP) are the training rows
        passing through each node, plus a tiny weight on every leaf so that
        leaves no training row reaches stay defined; a parent's cover is the
        sum of its children's. Counted in a compiled loop (:func:`_covers`):
        each training row once, at its leaf.
        """
        X_train = np.ascontiguousarray(X_train, dtype=np.float64)
        ends = np.r_[self.roots[1:], len(self.feature)]
        trees = np.concatenate([np.arange(d * self.trees_per_draw, (d + 1) * self.trees_per_draw) for d in draws]).astype(np.int64)
        covers = np.zeros(len(self.feature))
        _covers_kernel()(
            X_train, self.left.astype(np.int64), self.right.astype(np.int64), self.feature.astype(np.int64),
            self.threshold.astype(np.float64), self.roots.astype(np.int64)[trees], covers,
        )
        out = []
        for tree in trees:
            a, b = int(self.roots[tree]), int(ends[tree])
            left = np.where(self.left[a:b] >= 0, self.left[a:b] - a, -1).astype(np.int32)
            right = np.where(self.right[a:b] >= 0, self.right[a:b] - a, -1).astype(np.int32)
            feature = np.where(left >= 0, self.feature[a:b], -2).astype(np.int32)
            threshold = self.threshold[a:b].astype(np.float64)
            out.append(
                {
                    "children_left": left,
                    "children_right": right,
                    "children_default": left.copy(),
                    "features": feature,
                    "thresholds": threshold,
                    "values": (self.value[a:b] * scale)[:, None],
                    # nodes a sampler deleted are unreachable but must not be empty
                    "node_sample_weight": np.maximum(covers[a:b], 1e-6),
                }
            )
        return out


# Rows per block of the compiled walk: a block's rows go down one tree before the next tree (the tree's nodes
# stay in cache); measured on 2 cores with a BCF champion's 30,000 trees, 64 rows beat 32 and 256.
WALK_BLOCK = 64
# A feature's one-feature trees (stumps, mostly) become a step table once there are at least this many of them per
# slot x 1/TABLE_SHARE: a table costs one add per slot for a row, walking costs one walk per tree (measured on 2 cores:
# a BCF champion's mu forest, 17,000 stumps over 48 features, ~2.5 walks cost as much as one slot's add).
TABLE_SHARE = 0.25
_KERNEL = None


@dataclass
class CompiledWalk:
    """:class:`TreeArrays` arranged for the compiled walk, each tree in one of three groups.

    - trees that are a single leaf: their values summed per slot once (``constant``);
    - trees whose splits all test one feature (stumps, mostly: 87% of a BCF champion's
      mu trees), grouped by feature when a feature has enough of them: such a tree
      is a step function of that feature, so all of them together are a table of
      per-slot sums (``tables``) indexed by where the value falls among the
      feature's thresholds, one lookup per feature instead of one walk per tree;
    - the other trees (``walk``), walked node by node.

    The table entries are the trees' own walks at one value per threshold
    interval (the threshold itself, and +inf past the last): ``x <= t`` goes
    left as in the trees, NaN goes right of every threshold as it goes right at
    every node. Every row's sums are computed in the same order whatever the
    batch: a patient gets the same numbers alone or among 10^5.
    """

    constant: np.ndarray  # (slots,)
    table_features: np.ndarray  # (k,) int64
    cuts: np.ndarray  # concatenated sorted thresholds of each table feature
    cut_starts: np.ndarray  # (k + 1,) offsets into cuts
    tables: np.ndarray  # concatenated (cuts_j + 1, slots) tables, row-major
    table_starts: np.ndarray  # (k,) offset of each table in tables
    children: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    roots: np.ndarray  # the walked trees
    depth: np.ndarray
    slot: np.ndarray


def _compile_walk(arrays: TreeArrays, table_share: float = TABLE_SHARE) -> CompiledWalk:
    leaf = arrays.left < 0
    nodes = np.arange(len(arrays.left))
    children = np.empty(2 * len(nodes), dtype=np.int64)
    children[0::2] = np.where(leaf, nodes, arrays.left)
    children[1::2] = np.where(leaf, nodes, arrays.right)
    feature = np.where(leaf, 0, arrays.feature).astype(np.int64)
    threshold = np.where(leaf, np.inf, arrays.threshold)
    inner = np.flatnonzero(~leaf)
    level = np.zeros(len(nodes), dtype=np.int64)
    for _ in range(arrays.max_depth):  # each pass moves the depths one level further down
        level[arrays.left[inner]] = level[arrays.right[inner]] = level[inner] + 1
    roots = arrays.roots.astype(np.int64)
    depth = np.maximum.reduceat(level, roots)  # a tree's nodes run from its root to the next tree's root
    n_slots = arrays.n_slots
    slot = np.repeat(np.arange(n_slots), np.diff(np.r_[arrays.slot_starts, len(roots)])).astype(np.int64)
    big = np.iinfo(np.int64).max
    low = np.minimum.reduceat(np.where(leaf, big, arrays.feature), roots)  # per tree: the smallest and largest feature split on
    high = np.maximum.reduceat(np.where(leaf, -1, arrays.feature), roots)
    constant_trees = np.flatnonzero(depth == 0)
    constant = np.zeros(n_slots)
    np.add.at(constant, slot[constant_trees], arrays.value[roots[constant_trees]])  # in tree order within a slot
    single = (depth > 0) & (low == high)
    walked = depth > 0
    table_features, cuts, cut_starts, tables, table_starts = [], [], [0], [], []
    offset = 0
    for f in np.unique(low[single]):
        trees = np.flatnonzero(single & (low == f))
        if len(trees) < table_share * n_slots:
            continue
        walked[trees] = False
        tree_nodes = np.concatenate([np.arange(roots[t], roots[t + 1] if t + 1 < len(roots) else len(nodes)) for t in trees])
        thresholds = np.unique(arrays.threshold[tree_nodes[~leaf[tree_nodes]]])
        points = np.r_[thresholds, np.inf]  # one value inside each interval the thresholds cut
        node = np.repeat(roots[trees][:, None], len(points), axis=1)
        for _ in range(int(depth[trees].max())):
            node = children[2 * node + (~(points[None, :] <= threshold[node])).astype(np.int64)]
        table = np.zeros((n_slots, len(points)))
        np.add.at(table, slot[trees], arrays.value[node])  # in tree order within a slot
        table_features.append(int(f))
        cuts.append(thresholds)
        cut_starts.append(cut_starts[-1] + len(thresholds))
        tables.append(np.ascontiguousarray(table.T).ravel())
        table_starts.append(offset)
        offset += table.size
    keep = np.flatnonzero(walked)
    return CompiledWalk(
        constant=constant,
        table_features=np.asarray(table_features, dtype=np.int64),
        cuts=np.concatenate(cuts) if cuts else np.zeros(0),
        cut_starts=np.asarray(cut_starts, dtype=np.int64),
        tables=np.concatenate(tables) if tables else np.zeros(0),
        table_starts=np.asarray(table_starts, dtype=np.int64),
        children=children,
        feature=feature,
        threshold=threshold,
        roots=roots[keep],
        depth=depth[keep],
        slot=slot[keep],
    )


def _walk(X, constant, table_features, cuts, cut_starts, tables, table_starts, children, feature, threshold, value, roots, depth, slot, block):  # pragma: no cover - compiled by numba
    n = X.shape[0]
    n_slots = constant.shape[0]
    out = np.empty((n, n_slots))
    for start in range(0, n, block):
        stop = min(n, start + block)
        for i in range(start, stop):
            out[i, :] = constant
        for j in range(table_features.shape[0]):  # one table lookup per feature instead of one walk per tree
            f, a, b, base = table_features[j], cut_starts[j], cut_starts[j + 1], table_starts[j]
            for i in range(start, stop):
                x = X[i, f]
                lo, hi = a, b  # the first threshold t with x <= t (NaN: past the last)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if x <= cuts[mid]:
                        hi = mid
                    else:
                        lo = mid + 1
                row = base + (lo - a) * n_slots
                for s in range(n_slots):
                    out[i, s] += tables[row + s]
        for t in range(roots.shape[0]):
            root, s, d = roots[t], slot[t], depth[t]
            for i in range(start, stop):
                node = root
                for _ in range(d):  # x <= threshold goes left (a leaf goes to itself); NaN goes right
                    node = children[2 * node + (0 if X[i, feature[node]] <= threshold[node] else 1)]
                out[i, s] += value[node]
    return out


def _kernel():
    """The walk compiled once (numba caches the machine code next to this file); it releases the GIL."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        _KERNEL = numba.njit(cache=True, nogil=True)(_walk)
    return _KERNEL


def _row_quantiles(draws, quantiles, select):  # pragma: no cover - compiled by numba
    n, m = draws.shape
    out = np.empty((quantiles.shape[0], n))
    low = np.empty(select)
    high = np.empty(select)
    for i in range(n):
        x = draws[i]
        if np.isnan(x).any():  # as np.quantile: a row with NaN has NaN quantiles
            out[:, i] = np.nan
            continue
        if 2 * select < m:  # only ranks near either end are needed: two short buffers, not a sort
            for top in (False, True):  # the `select` smallest values ascending, the `select` largest descending
                buf = high if top else low
                count = 0
                for v in x:
                    if count < select:
                        j = count
                        count += 1
                    elif (v > buf[select - 1]) if top else (v < buf[select - 1]):
                        j = select - 1
                    else:
                        continue
                    while j > 0 and ((buf[j - 1] < v) if top else (buf[j - 1] > v)):
                        buf[j] = buf[j - 1]
                        j -= 1
                    buf[j] = v
        else:
            row = np.sort(x)
        for k in range(quantiles.shape[0]):
            virtual = (m - 1) * quantiles[k]  # numpy's "linear" method, operation for operation (_get_indexes, _lerp)
            if virtual >= m - 1:  # numpy: both indexes -1 (the last value), gamma measured from -1
                ia, ib, below = m - 1, m - 1, -1.0
            elif virtual < 0:
                ia, ib, below = 0, 0, 0.0
            else:
                below = np.floor(virtual)
                ia = int(below)
                ib = ia + 1
            gamma = virtual - below
            if 2 * select < m:
                a = low[ia] if ia < select else high[m - 1 - ia]
                b = low[ib] if ib < select else high[m - 1 - ib]
            else:
                a, b = row[ia], row[ib]
            diff = b - a
            out[k, i] = b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma
    return out


_QUANTILES = None
# Below this many cells (rows x draws), until the compiled loop is loaded, NumPy itself: importing numba and loading
# the cached loop takes 0.3-0.5 s, what NumPy needs for about 10^7 cells (30 ns a cell), and below the threshold NumPy
# takes at most about 60 ms (61 ms for the floor's 1,000 draws of 2,048 patients). So a training job's checks of
# its 99 patients (0.7 s of the default job when every check loaded it), or a file of a few thousand, never load it;
# `responders predict`'s 20,000-patient blocks do, and a service loads it while warming up (load_compiled_quantiles).
COMPILED_QUANTILE_CELLS = 2_000_000


def load_compiled_quantiles() -> None:
    """Import numba and load the compiled quantile loop now (a service's warm-up), not on a later large request."""
    global _QUANTILES
    if _QUANTILES is None:
        import numba

        _QUANTILES = numba.njit(cache=True, nogil=True)(_row_quantiles)


def row_quantiles(draws: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """``np.quantile(draws, quantiles, axis=1)`` (the linear method) in a compiled loop: the same floats, bit for bit.

    NumPy's partition-based quantile cost 17 us a row for 200 posterior draws
    (1.7 s for 10^5 patients); sorting each row in a compiled loop costs a
    fraction of that and releases the GIL (tests/test_batch.py checks the equality). Draws of fewer than
    :data:`COMPILED_QUANTILE_CELLS` cells go to NumPy until the loop is loaded.
    """
    if _QUANTILES is None and draws.size < COMPILED_QUANTILE_CELLS:
        return np.quantile(draws, quantiles, axis=1)  # the same floats; loading the compiled loop costs more
    load_compiled_quantiles()
    draws = np.ascontiguousarray(draws, dtype=np.float64)
    if draws.shape[1] == 0:
        return np.quantile(draws, quantiles, axis=1)
    m = draws.shape[1]
    ranks = [int(np.floor((m - 1) * q)) + e for q in quantiles for e in (0, 1)]
    select = max(1, max(min(r, m - 1 - r) for r in ranks) + 1)  # how far from either end the needed ranks lie
    return _QUANTILES(draws, np.asarray(quantiles, dtype=np.float64), select)


SHAP_TREE_KEYS = ("children_left", "children_right", "children_default", "features", "thresholds", "values", "node_sample_weight")


def pack_shap_trees(trees: list[dict]) -> dict[str, np.ndarray]:
    """``shap.TreeExplainer`` tree dictionaries as one concatenated array per key plus node offsets.

    A BCF champion explains with thousands of trees; pickling (and unpickling)
    each tree's seven small arrays cost seconds per artefact, a few arrays
    cost milliseconds. :func:`unpack_shap_trees` gives the trees back.
    """
    packed = {key: np.concatenate([tree[key] for tree in trees]) for key in SHAP_TREE_KEYS}
    packed["starts"] = np.cumsum([0] + [len(tree["children_left"]) for tree in trees])
    return packed


def unpack_shap_trees(packed: dict[str, np.ndarray]) -> list[dict]:
    """The tree dictionaries of :func:`pack_shap_trees` (views into its arrays)."""
    starts = packed["starts"]
    return [{key: packed[key][a:b] for key in SHAP_TREE_KEYS} for a, b in zip(starts[:-1], starts[1:], strict=True)]


def concat_forests(forests: list[TreeArrays]) -> TreeArrays:
    """Several flattened LightGBM forests as one, each forest's slots after the previous ones'."""
    offsets = np.cumsum([0] + [len(f.feature) for f in forests[:-1]])
    tree_offsets = np.cumsum([0] + [len(f.roots) for f in forests[:-1]])

    def shifted(values: np.ndarray, offset: int) -> np.ndarray:
        return np.where(values >= 0, values + offset, -1)

    return TreeArrays(
        feature=np.concatenate([f.feature for f in forests]),
        threshold=np.concatenate([f.threshold for f in forests]),
        left=np.concatenate([shifted(f.left, o) for f, o in zip(forests, offsets, strict=True)]),
        right=np.concatenate([shifted(f.right, o) for f, o in zip(forests, offsets, strict=True)]),
        value=np.concatenate([f.value for f in forests]),
        roots=np.concatenate([f.roots + o for f, o in zip(forests, offsets, strict=True)]),
        slot_starts=np.concatenate([f.slot_starts + o for f, o in zip(forests, tree_offsets, strict=True)]),
        max_depth=max(f.max_depth for f in forests),
        default_left=np.concatenate([f.default_left for f in forests]),
        missing_type=np.concatenate([f.missing_type for f in forests]),
    )


def flatten_lightgbm(booster) -> tuple[TreeArrays, str, float]:
    """One LightGBM booster as a one-slot :class:`TreeArrays`, with its objective and sigmoid scale.

    The raw score is the sum of the trees' leaf values (LightGBM folds the
    initial score into the first tree); ``binary`` maps it through
    ``1 / (1 + exp(-sigmoid * raw))``, ``regression`` returns it as is.
    """
    dump = booster.dump_model()
    objective = str(dump.get("objective", "")).split()
    kind = objective[0] if objective else ""
    if kind not in ("binary", "regression") or dump.get("num_tree_per_iteration", 1) != 1:
        raise ValueError(f"cannot flatten a LightGBM model with objective {dump.get('objective')!r}")
    sigmoid = 1.0
    for part in objective[1:]:
        if part.startswith("sigmoid:"):
            sigmoid = float(part.split(":", 1)[1])
    nodes: dict[str, list] = {k: [] for k in ("feature", "threshold", "left", "right", "value", "default_left", "missing")}
    roots, max_depth = [], 0

    def add(node: dict, depth: int) -> int:
        nonlocal max_depth
        index = len(nodes["feature"])
        for key in nodes:
            nodes[key].append(None)
        max_depth = max(max_depth, depth)
        if "leaf_value" in node:
            nodes["feature"][index], nodes["threshold"][index], nodes["value"][index] = -1, 0.0, float(node["leaf_value"])
            nodes["left"][index] = nodes["right"][index] = -1
            nodes["default_left"][index], nodes["missing"][index] = False, MISSING_NONE
            return index
        if node.get("decision_type", "<=") != "<=":
            raise ValueError("categorical splits are not supported (features are numeric)")
        nodes["feature"][index], nodes["threshold"][index], nodes["value"][index] = int(node["split_feature"]), float(node["threshold"]), 0.0
        nodes["default_left"][index] = bool(node.get("default_left", True))
        nodes["missing"][index] = _MISSING_CODES[str(node.get("missing_type", "None"))]
        nodes["left"][index] = add(node["left_child"], depth + 1)
        nodes["right"][index] = add(node["right_child"], depth + 1)
        return index

    for tree in dump["tree_info"]:
        roots.append(add(tree["tree_structure"], 0))
    if not roots:
        raise ValueError("a LightGBM model without trees")
    arrays = TreeArrays(
        feature=np.asarray(nodes["feature"], dtype=np.intp),
        threshold=np.asarray(nodes["threshold"], dtype=np.float64),
        left=np.asarray(nodes["left"], dtype=np.intp),
        right=np.asarray(nodes["right"], dtype=np.intp),
        value=np.asarray(nodes["value"], dtype=np.float64),
        roots=np.asarray(roots, dtype=np.intp),
        slot_starts=np.zeros(1, dtype=np.intp),
        max_depth=max_depth,
        default_left=np.asarray(nodes["default_left"], dtype=bool),
        missing_type=np.asarray(nodes["missing"], dtype=np.int8),
    )
    return arrays, kind, sigmoid


def flatten_stochtree(container, draws=None) -> TreeArrays:
    """Flatten a stochtree ``ForestContainer`` (one forest per retained draw) into :class:`TreeArrays`.

    ``draws``: the indices of the retained draws to keep, in order (None: all).
    Read node by node through stochtree's accessors: dumping the container to
    JSON and parsing it (the earlier way) cost seconds for a posterior of 1,000
    draws x 150 trees, mostly in JSON, whatever subset was kept. Node ids of a
    tree stay as stochtree numbers them (a deleted node is an unreachable leaf).
    """
    cpp = container.forest_container_cpp
    draws = range(cpp.NumSamples()) if draws is None else [int(i) for i in draws]
    per_draw = int(cpp.NumTrees())
    left_child, right_child, split_index, split_threshold = cpp.LeftChildNode, cpp.RightChildNode, cpp.SplitIndex, cpp.SplitThreshold
    leaf_values, categorical = cpp.NodeLeafValues, cpp.IsCategoricalSplitNode
    feature, threshold, left, right, value, roots = [], [], [], [], [], []
    offset = 0
    for f in draws:
        for t in range(per_draw):
            nodes = cpp.Nodes(f, t)
            size = int(nodes.max()) + 1 if len(nodes) else 1
            tree_left, tree_right, tree_feature = [-1] * size, [-1] * size, [-1] * size
            tree_threshold, tree_value = [0.0] * size, [0.0] * size
            for node in nodes.tolist():
                child = left_child(f, t, node)
                if child >= 0:
                    if categorical(f, t, node):
                        raise ValueError("categorical splits are not supported (features are numeric)")
                    tree_left[node], tree_right[node] = child + offset, right_child(f, t, node) + offset
                    tree_feature[node], tree_threshold[node] = split_index(f, t, node), split_threshold(f, t, node)
                else:
                    tree_value[node] = float(leaf_values(f, t, node)[0])
            roots.append(offset)
            offset += size
            left += tree_left
            right += tree_right
            feature += tree_feature
            threshold += tree_threshold
            value += tree_value
    left_, right_ = np.asarray(left, dtype=np.intp), np.asarray(right, dtype=np.intp)
    roots_ = np.asarray(roots, dtype=np.intp)
    return TreeArrays(
        feature=np.asarray(feature, dtype=np.intp),
        threshold=np.asarray(threshold, dtype=np.float64),
        left=left_,
        right=right_,
        value=np.asarray(value, dtype=np.float64),
        roots=roots_,
        slot_starts=np.arange(len(draws), dtype=np.intp) * per_draw,
        max_depth=_max_depth(left_, right_, roots_),
        n_draws=len(draws),
        trees_per_draw=per_draw,
    )


def _max_depth(left: np.ndarray, right: np.ndarray, roots: np.ndarray) -> int:
    """Depth of the deepest reachable leaf over every tree at once (global node ids; a root has depth 0)."""
    frontier, depth = np.asarray(roots, dtype=np.int64), 0
    while True:
        frontier = frontier[left[frontier] >= 0]
        if not len(frontier):
            return depth
        frontier = np.concatenate([left[frontier], right[frontier]])
        depth += 1


def _covers(X, left, right, feature, threshold, roots, cover):  # pragma: no cover - compiled by numba
    """Per tree (root node ``roots[k]``, global node ids): the training rows reaching each leaf plus 1e-6,
    then every reachable inner node the sum of its children (children before parents), written into ``cover``."""
    order = np.empty(left.shape[0], dtype=np.int64)
    for k in range(roots.shape[0]):
        root = roots[k]
        for i in range(X.shape[0]):
            node = root
            while left[node] >= 0:
                node = left[node] if X[i, feature[node]] <= threshold[node] else right[node]
            cover[node] += 1.0
        # reachable nodes, parents before children (a sampler's deleted nodes are unreachable)
        order[0], size, j = root, 1, 0
        while j < size:
            node = order[j]
            if left[node] >= 0:
                order[size], order[size + 1] = left[node], right[node]
                size += 2
            j += 1
        for j in range(size - 1, -1, -1):
            node = order[j]
            if left[node] >= 0:
                cover[node] = cover[left[node]] + cover[right[node]]
            else:
                cover[node] += 1e-6


_COVERS = None


def _covers_kernel():
    global _COVERS
    if _COVERS is None:
        import numba

        _COVERS = numba.njit(cache=True, nogil=True)(_covers)
    return _COVERS
