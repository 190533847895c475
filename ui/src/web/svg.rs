//! The geometry of the pages' SVG drawings: the DAG graph in layers, the Gantt chart of a run's
//! tries, the bars of run durations. Only numbers and class names are computed here; every label
//! is printed by the templates, which escape it.

use std::collections::HashMap;

pub const NODE_W: f64 = 160.0;
pub const NODE_H: f64 = 32.0;
const LAYER_GAP: f64 = 60.0;
const ROW_GAP: f64 = 14.0;
const PAD: f64 = 10.0;
/// Labels longer than this are cut in the drawing (the full id is in the node's title).
const LABEL_CHARS: usize = 20;

pub struct Node {
    pub x: f64,
    pub y: f64,
    pub tx: f64,
    pub ty: f64,
    pub label: String,
    pub title: String,
    pub class: String,
    pub href: Option<String>,
}

pub struct Edge {
    /// SVG path data: numbers and commands only.
    pub d: String,
}

pub struct Graph {
    pub width: f64,
    pub height: f64,
    pub node_w: f64,
    pub node_h: f64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// One task to draw: its id, its upstreams, the state class and link of its node.
pub struct GraphTask<'a> {
    pub id: &'a str,
    pub depends_on: &'a [String],
    pub state: Option<String>,
    pub href: Option<String>,
}

pub fn short(label: &str) -> String {
    if label.chars().count() <= LABEL_CHARS {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(LABEL_CHARS - 1).collect();
        s.push('…');
        s
    }
}

/// Lays the tasks out left to right, each in the layer after its deepest upstream. The tasks come
/// in topological order (as a DAG keeps them), so one pass suffices.
pub fn graph(tasks: &[GraphTask<'_>]) -> Graph {
    let mut layer_of: HashMap<&str, usize> = HashMap::new();
    let mut rows: Vec<usize> = Vec::new();
    let mut place: Vec<(usize, usize)> = Vec::with_capacity(tasks.len());
    for t in tasks {
        let layer = t
            .depends_on
            .iter()
            .filter_map(|d| layer_of.get(d.as_str()))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        layer_of.insert(t.id, layer);
        if rows.len() <= layer {
            rows.resize(layer + 1, 0);
        }
        place.push((layer, rows[layer]));
        rows[layer] += 1;
    }
    let at = |(layer, row): (usize, usize)| {
        (
            PAD + layer as f64 * (NODE_W + LAYER_GAP),
            PAD + row as f64 * (NODE_H + ROW_GAP),
        )
    };
    let index: HashMap<&str, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let mut nodes = Vec::with_capacity(tasks.len());
    let mut edges = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let (x, y) = at(place[i]);
        for d in t.depends_on {
            if let Some(&j) = index.get(d.as_str()) {
                let (ux, uy) = at(place[j]);
                let (x1, y1) = (ux + NODE_W, uy + NODE_H / 2.0);
                let (x2, y2) = (x, y + NODE_H / 2.0);
                let mid = (x1 + x2) / 2.0;
                edges.push(Edge {
                    d: format!(
                        "M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}"
                    ),
                });
            }
        }
        nodes.push(Node {
            x,
            y,
            tx: x + 8.0,
            ty: y + NODE_H / 2.0 + 4.0,
            label: short(t.id),
            title: match &t.state {
                Some(s) => format!("{} — {s}", t.id),
                None => t.id.to_string(),
            },
            class: format!("node s-{}", t.state.as_deref().unwrap_or("none")),
            href: t.href.clone(),
        });
    }
    let layers = rows.len().max(1) as f64;
    let most = rows.iter().copied().max().unwrap_or(1).max(1) as f64;
    Graph {
        width: 2.0 * PAD + layers * NODE_W + (layers - 1.0) * LAYER_GAP,
        height: 2.0 * PAD + most * NODE_H + (most - 1.0) * ROW_GAP,
        node_w: NODE_W,
        node_h: NODE_H,
        nodes,
        edges,
    }
}

pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub class: String,
    pub title: String,
    pub href: Option<String>,
}

pub struct Wait {
    pub x1: f64,
    pub x2: f64,
    pub y: f64,
    pub title: String,
}

pub struct GanttRow {
    pub label: String,
    pub title: String,
    pub ty: f64,
    pub bars: Vec<Bar>,
    pub waits: Vec<Wait>,
}

pub struct Gantt {
    pub width: f64,
    pub height: f64,
    pub label_w: f64,
    pub rows: Vec<GanttRow>,
    /// (x, text) of the time axis ticks.
    pub ticks: Vec<(f64, String)>,
    pub axis_y: f64,
}

/// One span of a Gantt row, in seconds from the chart's start.
pub struct Span {
    pub start: f64,
    pub end: f64,
    pub class: String,
    pub title: String,
    pub href: Option<String>,
}

pub struct GanttInput {
    pub label: String,
    pub tries: Vec<Span>,
    /// Waits (before a try, between tries), drawn as a thin dashed line.
    pub waits: Vec<(f64, f64, String)>,
}

const GANTT_LABEL_W: f64 = 170.0;
const GANTT_PLOT_W: f64 = 720.0;
const GANTT_ROW_H: f64 = 24.0;

/// Lays out tries on one time axis of `total` seconds.
pub fn gantt(rows: Vec<GanttInput>, total: f64) -> Gantt {
    let total = total.max(0.001);
    let scale = GANTT_PLOT_W / total;
    let x_of = |s: f64| GANTT_LABEL_W + s.clamp(0.0, total) * scale;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        let y = i as f64 * GANTT_ROW_H + 4.0;
        let bars = r
            .tries
            .into_iter()
            .map(|s| {
                let x = x_of(s.start);
                Bar {
                    x,
                    y,
                    // At least a sliver, so a try of a few milliseconds is still seen.
                    w: (x_of(s.end) - x).max(2.0),
                    h: GANTT_ROW_H - 8.0,
                    class: s.class,
                    title: s.title,
                    href: s.href,
                }
            })
            .collect();
        let waits = r
            .waits
            .into_iter()
            .filter(|(a, b, _)| b > a)
            .map(|(a, b, title)| Wait {
                x1: x_of(a),
                x2: x_of(b),
                y: y + (GANTT_ROW_H - 8.0) / 2.0,
                title,
            })
            .collect();
        out.push(GanttRow {
            title: r.label.clone(),
            label: short(&r.label),
            ty: y + GANTT_ROW_H / 2.0,
            bars,
            waits,
        });
    }
    let axis_y = out.len() as f64 * GANTT_ROW_H + 8.0;
    let ticks = (0..=4)
        .map(|k| {
            let s = total * k as f64 / 4.0;
            (x_of(s), super::elapsed(s))
        })
        .collect();
    Gantt {
        width: GANTT_LABEL_W + GANTT_PLOT_W + 60.0,
        height: axis_y + 20.0,
        label_w: GANTT_LABEL_W,
        rows: out,
        ticks,
        axis_y,
    }
}

pub struct Durations {
    pub width: f64,
    pub height: f64,
    pub bars: Vec<Bar>,
    pub max_label: String,
}

const DUR_H: f64 = 120.0;
const DUR_BAR_W: f64 = 14.0;
const DUR_GAP: f64 = 4.0;

/// One bar per run, oldest at the left: (seconds, state class, title, link).
pub fn durations(runs: Vec<(f64, String, String, String)>) -> Durations {
    let max = runs.iter().map(|r| r.0).fold(0.0f64, f64::max).max(0.001);
    let bars = runs
        .into_iter()
        .enumerate()
        .map(|(i, (secs, class, title, href))| {
            let h = (secs / max * DUR_H).max(2.0);
            Bar {
                x: 40.0 + i as f64 * (DUR_BAR_W + DUR_GAP),
                y: 10.0 + DUR_H - h,
                w: DUR_BAR_W,
                h,
                class,
                title,
                href: Some(href),
            }
        })
        .collect::<Vec<_>>();
    Durations {
        width: 60.0 + bars.len().max(1) as f64 * (DUR_BAR_W + DUR_GAP),
        height: DUR_H + 20.0,
        bars,
        max_label: super::elapsed(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_sits_one_layer_after_its_deepest_upstream() {
        let a: Vec<String> = vec![];
        let b = vec!["a".to_string()];
        let c = vec!["a".to_string(), "b".to_string()];
        let t = |id, deps| GraphTask {
            id,
            depends_on: deps,
            state: None,
            href: None,
        };
        let g = graph(&[t("a", &a), t("b", &b), t("c", &c)]);
        assert_eq!(g.nodes[0].x, PAD);
        assert_eq!(g.nodes[1].x, PAD + NODE_W + LAYER_GAP);
        assert_eq!(g.nodes[2].x, PAD + 2.0 * (NODE_W + LAYER_GAP));
        assert_eq!(g.edges.len(), 3);
        assert!(g.width >= g.nodes[2].x + NODE_W);
    }

    #[test]
    fn long_labels_are_cut() {
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(&"x".repeat(30)).chars().count(), LABEL_CHARS);
    }

    #[test]
    fn gantt_bars_stay_inside_the_plot() {
        let g = gantt(
            vec![GanttInput {
                label: "t".into(),
                tries: vec![Span {
                    start: 5.0,
                    end: 20.0,
                    class: "s-success".into(),
                    title: "try 1".into(),
                    href: None,
                }],
                waits: vec![(0.0, 5.0, "queued".into())],
            }],
            10.0,
        );
        let bar = &g.rows[0].bars[0];
        assert!(bar.x + bar.w <= GANTT_LABEL_W + GANTT_PLOT_W + 0.001);
        assert_eq!(g.rows[0].waits.len(), 1);
    }
}
