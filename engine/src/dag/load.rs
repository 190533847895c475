//! Loading a folder of DAG files: every valid DAG, and every problem of every other file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Dag, ParseOptions, Problem, parse_dag};
use crate::keys::Catalog;
use crate::yaml::Pos;

#[derive(Debug, Default)]
pub struct Loaded {
    pub dags: Vec<Dag>,
    /// File -> its problems; a file listed here contributed no DAG.
    pub errors: BTreeMap<PathBuf, Vec<Problem>>,
}

impl Loaded {
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.errors.values().flatten()
    }
}

/// Every `*.yaml` / `*.yml` file under `path` (or `path` itself if it is a file), sorted, skipping
/// hidden files and folders.
pub fn dag_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(out);
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let p = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads and validates the given files; duplicate ids among them are problems of every file
/// after the first that uses the id.
pub fn load_files(files: &[PathBuf], catalog: &dyn Catalog, opts: &ParseOptions) -> Loaded {
    let mut loaded = Loaded::default();
    let mut first_by_id: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let shown = file.display().to_string();
        let source = match read_capped(file, opts.limits.max_bytes) {
            Ok(s) => s,
            Err(message) => {
                loaded.errors.insert(
                    file.clone(),
                    vec![Problem {
                        path: shown,
                        pos: Pos { line: 1, col: 1 },
                        message,
                    }],
                );
                continue;
            }
        };
        match parse_dag(file, &source, catalog, opts) {
            Ok(dag) => {
                if let Some(first) = first_by_id.get(&dag.id) {
                    loaded.errors.insert(
                        file.clone(),
                        vec![Problem {
                            path: shown,
                            pos: dag.id_pos,
                            message: format!(
                                "duplicate DAG id '{}': already defined in {}",
                                dag.id,
                                first.display()
                            ),
                        }],
                    );
                } else {
                    first_by_id.insert(dag.id.clone(), file.clone());
                    loaded.dags.push(dag);
                }
            }
            Err(problems) => {
                loaded.errors.insert(file.clone(), problems);
            }
        }
    }
    loaded
}

pub(crate) fn load_folder(
    path: &Path,
    catalog: &dyn Catalog,
    opts: &ParseOptions,
) -> std::io::Result<Loaded> {
    let files = dag_files(path)?;
    Ok(load_files(&files, catalog, opts))
}

fn read_capped(path: &Path, max: usize) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if meta.len() as usize > max {
        return Err(format!("file is larger than {max} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read file: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("file is not UTF-8: {e}"))
}
