//! Reads a perpetual booster's JSON straight into a [`Forest`], one tree at a time.
//!
//! perpetual's own `from_json` builds every node as a ~100-byte struct in a hash map per tree:
//! a default-budget booster trained on a million rows (860 MB of JSON) took 8.4 GB that way,
//! for a forest that is about a tenth of the JSON. Here only the fields scoring reads are kept,
//! and each tree is laid out and dropped as soon as it is read.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::Forest;

/// perpetual writes a NaN as `null`, and reads `null` back as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(d).map(|v| v.unwrap_or(f64::NAN))
}

#[derive(Deserialize)]
struct BoosterDoc {
    #[serde(deserialize_with = "nan_if_null")]
    base_score: f64,
    cfg: ConfigDoc,
    trees: Trees,
}

#[derive(Deserialize)]
struct ConfigDoc {
    #[serde(deserialize_with = "nan_if_null")]
    missing: f64,
}

#[derive(Deserialize)]
struct TreeDoc {
    nodes: HashMap<usize, NodeDoc>,
}

/// The fields of perpetual's `Node` that scoring reads.
#[derive(Deserialize)]
pub(super) struct NodeDoc {
    pub weight_value: Option<f32>,
    pub split_value: Option<f64>,
    pub split_feature: usize,
    pub missing_node: usize,
    pub left_child: usize,
    pub right_child: usize,
    pub is_leaf: bool,
    #[serde(default, deserialize_with = "perpetual::node::deserialize_left_cats")]
    pub left_cats: Option<Box<[u8]>>,
}

/// The trees, flattened as they are read.
struct Trees(Forest);

impl<'de> Deserialize<'de> for Trees {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Trees, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Trees;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of trees")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Trees, A::Error> {
                let mut forest = Forest::empty();
                while let Some(tree) = seq.next_element::<TreeDoc>()? {
                    let t = forest.roots.len();
                    forest
                        .add_tree(&tree.nodes)
                        .map_err(|e| de::Error::custom(format!("tree {t}: {e}")))?;
                }
                Ok(Trees(forest))
            }
        }
        d.deserialize_seq(Each)
    }
}

impl Forest {
    /// The forest of a booster as perpetual's `json_dump` writes it; an error for JSON that is
    /// not one, or a tree that is not a tree (which only a corrupt artifact has).
    pub fn from_json(text: &str) -> Result<Forest, serde_json::Error> {
        let doc: BoosterDoc = serde_json::from_str(text)?;
        let mut forest = doc.trees.0;
        forest.base = doc.base_score;
        forest.missing = doc.cfg.missing;
        Ok(forest)
    }
}
