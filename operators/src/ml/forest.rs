//! A perpetual booster's trees as flat arrays, for scoring.
//!
//! perpetual keeps each tree as a `HashMap<usize, Node>` of ~100-byte nodes and walks it one row
//! at a time through hash lookups: a default-budget booster (hundreds of trees, tens of levels
//! deep) scores about 13,000 rows a second on one core. Here every node of every tree is one
//! 16-byte [`Flat`] in one array (its split value and feature, or a leaf's weight, and where its
//! children are: side by side, so a step is `left + (value >= split)`, no branch), the rare
//! cases (a missing value, a categorical split) in a side array the common step never reads.
//!
//! Rows are scored [`BLOCK`] at a time, tree by tree. A deep tree is a few hundred kilobytes:
//! it is read in order once per block (which the processor streams from memory far faster than
//! the scattered reads of a walk would fetch it), then walked by the whole block from the
//! core's own cache. The block's rows are copied row by row, so a walk finds a row's features
//! in a cache line or two. [`LANES`] rows walk the tree at once, one step each per round: a
//! walk is a chain of dependent loads, and independent chains overlap their latencies. A lane
//! whose row reached a leaf takes the next row without a branch (the leaf is remembered, its
//! weight added after the walk), so no lane idles while another walks deeper.
//!
//! The sum is the same as perpetual's, bit for bit: `base_score`, then each tree's leaf in tree
//! order, each leaf's `f32` weight widened to `f64`; the same missing-value and categorical rules
//! as `Node::get_child_idx` (tests compare the two on random rows).

mod load;

use std::collections::HashMap;

use rayon::prelude::*;

use load::NodeDoc;

/// Marks [`Flat::feature`] of a categorical split, which the common step does not take.
const SPECIAL: u32 = 1 << 31;
/// [`Rare::cats`] of a numeric split.
const NUMERIC: u32 = u32::MAX;
/// Rows scored together, tree by tree (a batch of the input is 8,192 rows).
const BLOCK: usize = 4096;
/// Rows that walk one tree at once: measured best on the benchmark's booster (fewer leave
/// latencies bare, more spill the lanes' state out of registers).
const LANES: usize = 6;
/// Above this many rows, blocks are scored on every core.
const PARALLEL_ROWS: usize = 65_536;
/// Nodes in a 64-byte cache line.
const PER_LINE: usize = 64 / std::mem::size_of::<Flat>();

#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Flat {
    /// The split value, or a leaf's weight.
    value: f64,
    /// The feature a split reads, `| SPECIAL` for a categorical split; 0 for a leaf (any
    /// column: a leaf's step reads a value and throws the step away).
    feature: u32,
    /// The left child, the right one next to it; a leaf's is itself.
    left: u32,
}

/// What a node needs only for a missing value or a categorical split.
#[derive(Debug, Clone, Copy)]
struct Rare {
    missing: u32,
    /// Index into `Forest::cats` of the left categories' bitset, or [`NUMERIC`].
    cats: u32,
}

/// A booster's trees, ready to score column-major rows.
#[derive(Debug)]
pub struct Forest {
    base: f64,
    /// `value == missing` marks a missing value (NaN: any NaN).
    missing: f64,
    nodes: Vec<Flat>,
    /// Beside `nodes`, one for one.
    rare: Vec<Rare>,
    /// Each tree's root in `nodes`; a tree's nodes are `roots[t]..roots[t + 1]`.
    roots: Vec<u32>,
    cats: Vec<Box<[u8]>>,
    /// The largest feature index a split reads.
    max_feature: usize,
}

impl Forest {
    fn empty() -> Forest {
        Forest {
            base: 0.0,
            missing: f64::NAN,
            nodes: Vec::new(),
            rare: Vec::new(),
            roots: Vec::new(),
            cats: Vec::new(),
            max_feature: 0,
        }
    }

    /// How many trees.
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    fn push(&mut self, node: &NodeDoc) -> Result<u32, String> {
        let at = u32::try_from(self.nodes.len())
            .ok()
            .filter(|at| *at < SPECIAL)
            .ok_or("too many nodes")?;
        let mut flat = Flat {
            // perpetual writes a NaN as `null`.
            value: f64::from(node.weight_value.unwrap_or(f32::NAN)),
            feature: 0,
            left: at,
        };
        let mut rare = Rare {
            missing: at,
            cats: NUMERIC,
        };
        if !node.is_leaf {
            self.max_feature = self.max_feature.max(node.split_feature);
            flat.value = node.split_value.unwrap_or(f64::NAN);
            flat.feature = u32::try_from(node.split_feature)
                .ok()
                .filter(|f| *f < SPECIAL)
                .ok_or(format!("feature {} is out of range", node.split_feature))?;
            if let Some(bits) = &node.left_cats {
                self.cats.push(bits.clone());
                rare.cats = (self.cats.len() - 1) as u32;
                flat.feature |= SPECIAL;
            }
        }
        self.nodes.push(flat);
        self.rare.push(rare);
        Ok(at)
    }

    /// Lays one tree out depth first, each node's children placed together, so that a walk
    /// down a subtree stays near where it started.
    fn add_tree(&mut self, nodes: &HashMap<usize, NodeDoc>) -> Result<(), String> {
        let get = |id: usize| nodes.get(&id).ok_or(format!("no node {id}"));
        // A tree lays out each of its nodes once; more means a child is an ancestor.
        let most = self.nodes.len() + nodes.len();
        let root = self.push(get(0)?)?;
        self.roots.push(root);
        let mut stack = vec![(0usize, root)];
        while let Some((id, at)) = stack.pop() {
            let node = get(id)?;
            if node.is_leaf {
                continue;
            }
            if self.nodes.len() > most {
                return Err("a node is its own ancestor".into());
            }
            let left = self.push(get(node.left_child)?)?;
            let right = self.push(get(node.right_child)?)?;
            stack.push((node.right_child, right));
            stack.push((node.left_child, left));
            let missing = if node.missing_node == node.left_child {
                left
            } else if node.missing_node == node.right_child {
                right
            } else {
                let m = self.push(get(node.missing_node)?)?;
                stack.push((node.missing_node, m));
                m
            };
            self.nodes[at as usize].left = left;
            self.rare[at as usize].missing = missing;
        }
        Ok(())
    }

    /// The raw score (log-odds for classification) of each of `rows` column-major rows of
    /// `cols` columns.
    pub fn predict(&self, data: &[f64], rows: usize, cols: usize) -> Result<Vec<f64>, String> {
        if !self.nodes.is_empty() && self.max_feature >= cols {
            return Err(format!(
                "the booster splits on column {} of {cols}",
                self.max_feature
            ));
        }
        if cols == 0 && !self.nodes.is_empty() {
            return Err("the booster needs at least one column".into());
        }
        if data.len() < rows * cols {
            return Err(format!("{} values for {rows} rows of {cols}", data.len()));
        }
        let mut out = vec![self.base; rows];
        let score = |(b, sums): (usize, &mut [f64])| {
            let block = Block::of(data, rows, cols, b * BLOCK, sums.len());
            self.score(&block, sums);
        };
        if rows > PARALLEL_ROWS {
            out.par_chunks_mut(BLOCK).enumerate().for_each(score);
        } else {
            out.chunks_mut(BLOCK).enumerate().for_each(score);
        }
        Ok(out)
    }

    /// Adds each tree's leaf, in tree order, to each of `sums`, the block's rows.
    fn score(&self, block: &Block, sums: &mut [f64]) {
        let mut leaves = vec![0u32; sums.len()];
        for t in 0..self.roots.len() {
            self.warm(t);
            if self.missing.is_nan() {
                self.tree::<true>(self.roots[t], block, &mut leaves);
            } else {
                self.tree::<false>(self.roots[t], block, &mut leaves);
            }
            for (sum, &leaf) in sums.iter_mut().zip(&leaves) {
                *sum += self.nodes[leaf as usize].value;
            }
        }
    }

    /// Reads tree `t`'s nodes in order, a cache line at a time, so that its walks find them in
    /// cache.
    fn warm(&self, t: usize) {
        let start = self.roots[t] as usize;
        let end = self
            .roots
            .get(t + 1)
            .map_or(self.nodes.len(), |e| *e as usize);
        let seen = self.nodes[start..end]
            .iter()
            .step_by(PER_LINE)
            .fold(0, |seen, node| seen ^ node.left);
        std::hint::black_box(seen);
    }

    /// Sets `leaves[r]` to the leaf the block's row `r` reaches in the tree at `root`.
    /// `NAN_MISSING`: the missing value is NaN (perpetual's default), one test fewer a step.
    fn tree<const NAN_MISSING: bool>(&self, root: u32, block: &Block, leaves: &mut [u32]) {
        let n = leaves.len();
        let mut at = [root; LANES];
        let mut row: [usize; LANES] = std::array::from_fn(|k| if k < n { k } else { usize::MAX });
        let mut next = LANES.min(n);
        // Each round takes at most LANES new rows, so every row a lane holds is one of the block's.
        while next + LANES <= n {
            for k in 0..LANES {
                let (a, r) = (at[k], row[k]);
                let node = &self.nodes[a as usize];
                leaves[r] = a;
                let go = self.step::<NAN_MISSING>(a, *node, block.value(r, node.feature));
                let leaf = node.left == a;
                at[k] = if leaf { root } else { go };
                row[k] = if leaf { next } else { r };
                next += usize::from(leaf);
            }
        }
        // The walks under way, then the rows no lane took, one at a time.
        for k in 0..LANES {
            if row[k] < n {
                leaves[row[k]] = self.leaf(at[k], block, row[k]);
            }
        }
        for (r, leaf) in leaves.iter_mut().enumerate().skip(next) {
            *leaf = self.leaf(root, block, r);
        }
    }

    /// The leaf the block's row `row` reaches from `at`.
    fn leaf(&self, mut at: u32, block: &Block, row: usize) -> u32 {
        loop {
            let node = self.nodes[at as usize];
            if node.left == at {
                return at;
            }
            at = self.step::<false>(at, node, block.value(row, node.feature));
        }
    }

    /// The child a value `v` of `node`'s feature goes to (`node` is at `at`). `NAN_MISSING`:
    /// the missing value is known to be NaN, one test fewer (false is right for any missing
    /// value, since `v == NaN` never holds).
    #[inline(always)]
    fn step<const NAN_MISSING: bool>(&self, at: u32, node: Flat, v: f64) -> u32 {
        if node.feature & SPECIAL != 0 || v.is_nan() || (!NAN_MISSING && v == self.missing) {
            self.rare_step(at, node, v)
        } else {
            child(node.left, v, node.value)
        }
    }

    /// The child a value `v` of `node`'s feature goes to when it is missing, NaN, or read by a
    /// categorical split (`node` is at `at`).
    #[cold]
    #[inline(never)]
    fn rare_step(&self, at: u32, node: Flat, v: f64) -> u32 {
        let rare = self.rare[at as usize];
        let missing = if self.missing.is_nan() {
            v.is_nan()
        } else {
            v == self.missing
        };
        if missing {
            rare.missing
        } else if rare.cats != NUMERIC {
            let idx = v as usize;
            let left = self.cats[rare.cats as usize]
                .get(idx >> 3)
                .is_some_and(|byte| (byte >> (idx & 7)) & 1 == 1);
            node.left + u32::from(!left)
        } else {
            // A NaN that is not the missing value goes right, as in perpetual.
            child(node.left, v, node.value)
        }
    }
}

/// perpetual's rule for a number: left when `v < split`, else right (a NaN too). The children
/// are side by side, so this is an add. Written as a negated `<` on purpose: it is exactly
/// perpetual's test for every value, NaN included, and the compiler keeps it branch-free (an
/// `if` here became a mispredicted branch and scoring four times slower).
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn child(left: u32, v: f64, split: f64) -> u32 {
    left + u32::from(!(v < split))
}

/// A block's rows, row by row: a walk reads one row's features again and again.
struct Block {
    values: Vec<f64>,
    cols: usize,
}

impl Block {
    /// Rows `first..first + n` of `rows` column-major rows of `cols` columns.
    fn of(data: &[f64], rows: usize, cols: usize, first: usize, n: usize) -> Block {
        let mut values = vec![0.0; n * cols];
        for (c, column) in data.chunks_exact(rows.max(1)).take(cols).enumerate() {
            for (r, v) in column[first..first + n].iter().enumerate() {
                values[r * cols + c] = *v;
            }
        }
        Block { values, cols }
    }

    /// Row `row`'s value of `feature` (a split's feature, `SPECIAL` or not).
    #[inline(always)]
    fn value(&self, row: usize, feature: u32) -> f64 {
        self.values[row * self.cols + (feature & !SPECIAL) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perpetual::booster::config::BoosterIO;
    use perpetual::objective::Objective;
    use perpetual::{Matrix, PerpetualBooster};
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    /// Column-major rows: a numeric column with missing values, a categorical one (0..6, some
    /// missing), and a noisy one.
    fn rows(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut data = vec![0.0; n * 3];
        let mut y = vec![0.0; n];
        for r in 0..n {
            let a: f64 = rng.random_range(-3.0..3.0);
            let cat = rng.random_range(0..6) as f64;
            let noise: f64 = rng.random_range(0.0..1.0);
            data[r] = if rng.random_bool(0.1) { f64::NAN } else { a };
            data[n + r] = if rng.random_bool(0.05) { f64::NAN } else { cat };
            data[2 * n + r] = noise;
            let z = a + if cat == 2.0 || cat == 4.0 { 1.5 } else { -0.5 } + noise;
            y[r] = f64::from(u8::from(z > 0.3));
        }
        (data, y)
    }

    fn booster(objective: Objective, budget: f32) -> (PerpetualBooster, Vec<f64>) {
        let n = 3_000;
        let (data, y) = rows(n, 7);
        let mut b = PerpetualBooster::default()
            .set_objective(objective)
            .set_budget(budget);
        let m = Matrix::new(&data, n, 3);
        b.fit(&m, &y, None, None).unwrap();
        (b, y)
    }

    fn same_as_perpetual(b: &PerpetualBooster, n: usize) {
        let (data, _) = rows(n, 11);
        same_on(b, &data, n);
    }

    fn same_on(b: &PerpetualBooster, data: &[f64], n: usize) {
        let forest = Forest::from_json(&b.json_dump().unwrap()).unwrap();
        assert_eq!(forest.trees(), b.get_prediction_trees().len());
        let ours = forest.predict(data, n, 3).unwrap();
        let theirs = b.predict(&Matrix::new(data, n, 3), false);
        assert_eq!(ours.len(), theirs.len());
        for (r, (a, t)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.to_bits(), t.to_bits(), "row {r}: {a} vs {t}");
        }
    }

    #[test]
    fn scores_bit_for_bit_as_perpetual_with_missing_values() {
        let (b, _) = booster(Objective::LogLoss, 1.0);
        assert!(b.get_prediction_trees().len() > 1);
        same_as_perpetual(&b, 1_000);
        // Fewer rows than lanes.
        same_as_perpetual(&b, 3);
        let (b, _) = booster(Objective::SquaredLoss, 0.5);
        same_as_perpetual(&b, 700);
    }

    #[test]
    fn a_missing_value_that_is_not_nan_takes_the_missing_branch() {
        let n = 3_000;
        let (mut data, y) = rows(n, 5);
        data.iter_mut()
            .filter(|v| v.is_nan())
            .for_each(|v| *v = 99.0);
        let mut b = PerpetualBooster::default()
            .set_objective(Objective::LogLoss)
            .set_budget(0.5)
            .set_missing(99.0);
        b.fit(&Matrix::new(&data, n, 3), &y, None, None).unwrap();
        let (mut score, _) = rows(1_000, 13);
        score
            .iter_mut()
            .filter(|v| v.is_nan())
            .for_each(|v| *v = 99.0);
        same_on(&b, &score, 1_000);
        // perpetual panics on a NaN that is not the missing value; the forest sends it right.
        let forest = Forest::from_json(&b.json_dump().unwrap()).unwrap();
        score[0] = f64::NAN;
        assert!(forest.predict(&score, 1_000, 3).unwrap()[0].is_finite());
    }

    #[test]
    fn categorical_splits_follow_the_left_categories() {
        let n = 3_000;
        let (data, y) = rows(n, 3);
        let mut b = PerpetualBooster::default()
            .set_objective(Objective::LogLoss)
            .set_budget(1.0)
            .set_categorical_features(Some(HashSet::from([1])));
        b.fit(&Matrix::new(&data, n, 3), &y, None, None).unwrap();
        let cat_splits = b
            .get_prediction_trees()
            .iter()
            .flat_map(|t| t.nodes.values())
            .filter(|n| n.left_cats.is_some())
            .count();
        assert!(cat_splits > 0, "the booster made no categorical split");
        same_as_perpetual(&b, 1_000);
    }

    #[test]
    fn many_rows_score_in_parallel_blocks_alike() {
        let (b, _) = booster(Objective::LogLoss, 0.5);
        // Past PARALLEL_ROWS, with a last block that is not full.
        same_as_perpetual(&b, PARALLEL_ROWS + 1_003);
    }

    #[test]
    fn a_row_narrower_than_the_splits_is_an_error() {
        let (b, _) = booster(Objective::LogLoss, 0.5);
        let forest = Forest::from_json(&b.json_dump().unwrap()).unwrap();
        let err = forest.predict(&[0.0, 1.0], 1, 2).unwrap_err();
        assert!(err.contains("splits on column 2 of 2"), "{err}");
        assert!(forest.predict(&[0.0; 2], 1, 3).is_err());
    }

    /// A forest read from `json` with its first tree's `nodes` replaced.
    fn with_nodes(nodes: serde_json::Value) -> Result<Forest, serde_json::Error> {
        let (b, _) = booster(Objective::LogLoss, 0.5);
        let mut json: serde_json::Value = serde_json::from_str(&b.json_dump().unwrap()).unwrap();
        json["trees"][0]["nodes"] = nodes;
        Forest::from_json(&json.to_string())
    }

    fn node(id: usize, leaf: bool, left: usize, right: usize) -> serde_json::Value {
        serde_json::json!({
            "num": id, "weight_value": 0.5, "hessian_sum": 1.0, "split_value": 0.0,
            "split_feature": 0, "split_gain": 0.0, "missing_node": left, "left_child": left,
            "right_child": right, "is_leaf": leaf, "parent_node": 0, "left_cats": null,
            "stats": null
        })
    }

    #[test]
    fn a_tree_that_is_not_a_tree_is_an_error_naming_it() {
        let err =
            with_nodes(serde_json::json!({"0": node(0, false, 1, 2), "1": node(1, true, 0, 0)}))
                .unwrap_err()
                .to_string();
        assert!(err.contains("tree 0: no node 2"), "{err}");
        let err = with_nodes(serde_json::json!({
            "0": node(0, false, 1, 2), "1": node(1, false, 0, 2), "2": node(2, true, 0, 0)
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("tree 0: a node is its own ancestor"), "{err}");
        assert!(Forest::from_json("{\"trees\": 3}").is_err());
        // A one-leaf tree is a tree.
        let forest = with_nodes(serde_json::json!({"0": node(0, true, 0, 0)})).unwrap();
        assert!(forest.trees() > 1);
    }
}
