//! A perpetual booster's trees as flat arrays, for scoring.
//!
//! perpetual keeps each tree as a `HashMap<usize, Node>` of ~100-byte nodes and walks it one row
//! at a time through hash lookups: a default-budget booster (hundreds of trees, tens of levels
//! deep) scores a few thousand rows a second. Here every node of every tree is one 32-byte
//! [`Flat`] in one array, a node's children side by side, and rows are scored a block at a time,
//! tree by tree, so a tree's top levels stay in cache across the block. Within a block, [`LANES`]
//! rows walk a tree together, one step each per round: a walk is a chain of dependent loads, and
//! independent chains let the processor overlap their latencies. A leaf points to itself, so a
//! step is the same compare-and-select for every lane and a round ends the walk when no lane
//! moved.
//!
//! The sum is the same as perpetual's, bit for bit: `base_score`, then each tree's leaf in tree
//! order, each leaf's `f32` weight widened to `f64`; the same missing-value and categorical rules
//! as `Node::get_child_idx` (tests compare the two on random rows).

use std::collections::{HashMap, VecDeque};

use perpetual::PerpetualBooster;
use perpetual::node::Node;
use rayon::prelude::*;

/// `cats` of a numeric split.
const NUMERIC: u32 = u32::MAX;
/// Rows scored together, tree by tree.
const BLOCK: usize = 256;
/// Rows that walk one tree together.
const LANES: usize = 8;
/// Above this many rows, blocks are scored on every core.
const PARALLEL_ROWS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Flat {
    /// The split value.
    value: f64,
    /// A leaf's weight, as perpetual keeps it.
    weight: f32,
    feature: u32,
    /// A leaf's children are itself.
    left: u32,
    right: u32,
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
    /// Each tree's root in `nodes`.
    roots: Vec<u32>,
    cats: Vec<Box<[u8]>>,
    /// The largest feature index a split reads.
    max_feature: usize,
}

impl Forest {
    /// Flattens `booster`'s trees; an error for a tree that is not one (a child that is not
    /// there), which only a corrupt artifact has.
    pub fn of(booster: &PerpetualBooster) -> Result<Forest, String> {
        let mut forest = Forest {
            base: booster.base_score,
            missing: booster.cfg.missing,
            nodes: Vec::new(),
            roots: Vec::new(),
            cats: Vec::new(),
            max_feature: 0,
        };
        for (t, tree) in booster.get_prediction_trees().iter().enumerate() {
            forest
                .add_tree(&tree.nodes)
                .map_err(|e| format!("tree {t}: {e}"))?;
        }
        Ok(forest)
    }

    fn push(&mut self, node: &Node) -> Result<u32, String> {
        let at = u32::try_from(self.nodes.len())
            .ok()
            .filter(|at| *at < NUMERIC)
            .ok_or("too many nodes")?;
        let mut flat = Flat {
            value: 0.0,
            weight: node.weight_value,
            feature: 0,
            left: at,
            right: at,
            missing: at,
            cats: NUMERIC,
        };
        if !node.is_leaf {
            self.max_feature = self.max_feature.max(node.split_feature);
            flat.value = node.split_value;
            flat.feature = u32::try_from(node.split_feature).map_err(|e| e.to_string())?;
            if let Some(bits) = &node.left_cats {
                self.cats.push(bits.clone());
                flat.cats = (self.cats.len() - 1) as u32;
            }
        }
        self.nodes.push(flat);
        Ok(at)
    }

    /// Lays one tree out breadth first, each node's children placed together.
    fn add_tree(&mut self, nodes: &HashMap<usize, Node>) -> Result<(), String> {
        let get = |id: usize| nodes.get(&id).ok_or(format!("no node {id}"));
        // A tree lays out each of its nodes once; more means a child is an ancestor.
        let most = self.nodes.len() + nodes.len();
        let root = self.push(get(0)?)?;
        self.roots.push(root);
        let mut queue = VecDeque::from([(0usize, root)]);
        while let Some((id, at)) = queue.pop_front() {
            let node = get(id)?;
            if node.is_leaf {
                continue;
            }
            if self.nodes.len() > most {
                return Err("a node is its own ancestor".into());
            }
            let left = self.push(get(node.left_child)?)?;
            let right = self.push(get(node.right_child)?)?;
            queue.push_back((node.left_child, left));
            queue.push_back((node.right_child, right));
            let missing = if node.missing_node == node.left_child {
                left
            } else if node.missing_node == node.right_child {
                right
            } else {
                let m = self.push(get(node.missing_node)?)?;
                queue.push_back((node.missing_node, m));
                m
            };
            let flat = &mut self.nodes[at as usize];
            (flat.left, flat.right, flat.missing) = (left, right, missing);
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
        if data.len() < rows * cols {
            return Err(format!("{} values for {rows} rows of {cols}", data.len()));
        }
        let mut out = vec![self.base; rows];
        let score = |(b, chunk): (usize, &mut [f64])| self.block(data, rows, b * BLOCK, chunk);
        if rows > PARALLEL_ROWS {
            out.par_chunks_mut(BLOCK).enumerate().for_each(score);
        } else {
            out.chunks_mut(BLOCK).enumerate().for_each(score);
        }
        Ok(out)
    }

    fn block(&self, data: &[f64], rows: usize, first: usize, out: &mut [f64]) {
        for &root in &self.roots {
            for (c, sums) in out.chunks_mut(LANES).enumerate() {
                self.lanes(root, data, rows, first + c * LANES, sums);
            }
        }
    }

    /// Walks `sums.len()` (at most [`LANES`]) rows from `row` down one tree together and adds
    /// each one's leaf.
    #[inline]
    fn lanes(&self, root: u32, data: &[f64], rows: usize, row: usize, sums: &mut [f64]) {
        let n = sums.len();
        let mut at = [root; LANES];
        loop {
            let mut moved = false;
            for k in 0..n {
                let node = &self.nodes[at[k] as usize];
                let next = self.next(node, data[node.feature as usize * rows + row + k]);
                moved |= next != at[k];
                at[k] = next;
            }
            if !moved {
                break;
            }
        }
        for (k, sum) in sums.iter_mut().enumerate() {
            *sum += f64::from(self.nodes[at[k] as usize].weight);
        }
    }

    #[inline]
    fn next(&self, node: &Flat, v: f64) -> u32 {
        let missing = if self.missing.is_nan() {
            v.is_nan()
        } else {
            v == self.missing
        };
        if missing {
            node.missing
        } else if node.cats != NUMERIC {
            if self.goes_left(node.cats, v) {
                node.left
            } else {
                node.right
            }
        } else if v < node.value {
            node.left
        } else {
            // Not `v >= split`: the two differ on a NaN that is not the missing value, and this
            // is perpetual's.
            node.right
        }
    }

    fn goes_left(&self, cats: u32, v: f64) -> bool {
        let idx = v as usize;
        self.cats[cats as usize]
            .get(idx >> 3)
            .is_some_and(|byte| (byte >> (idx & 7)) & 1 == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let forest = Forest::of(b).unwrap();
        let ours = forest.predict(&data, n, 3).unwrap();
        let theirs = b.predict(&Matrix::new(&data, n, 3), false);
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
        let (b, _) = booster(Objective::SquaredLoss, 0.5);
        same_as_perpetual(&b, 700);
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
        let forest = Forest::of(&b).unwrap();
        let err = forest.predict(&[0.0, 1.0], 1, 2).unwrap_err();
        assert!(err.contains("splits on column 2 of 2"), "{err}");
        assert!(forest.predict(&[0.0; 2], 1, 3).is_err());
    }
}
