//! A self-contained SVG of the state machine, laid out here (no Graphviz).
//!
//! Layout, in the order it is computed:
//!
//! 1. **Columns** by breadth-first depth from the initial state over the
//!    row transitions; states never reached go in later columns. The "any
//!    state" node, when present, takes column 0 on its own, to the left of
//!    the initial state. Within a column, nodes stack in discovery order;
//!    a row of the grid is aligned across columns, so a chain of states
//!    reads as one horizontal line.
//! 2. **Self-loops** (rows that keep the state) are one arc above the node
//!    with every such row listed above it; columns are as wide as that
//!    list, and grid rows leave room for it.
//! 3. **Forward edges** (to the next column, rows only) are straight lines
//!    with the label above the middle; the gap between two columns is as
//!    wide as its widest label.
//! 4. **Every other edge** (backward, same column, skipping columns,
//!    timeouts) runs in its own horizontal lane below all nodes, leaving
//!    and entering nodes through their bottom side. Shorter lanes lie
//!    closer to the nodes, and each node orders its lane endpoints so that
//!    lanes never cross one another's vertical legs at that node. A lane's
//!    label sits above its line, shifted sideways off the legs of deeper
//!    lanes when it can be.
//!
//! Text widths are estimated for a monospace font (every glyph of DejaVu
//! Sans Mono, Menlo and Consolas advances 0.6 em), so boxes fit their text
//! without font metrics.

use std::fmt::Write;

use crate::graph::{Edge, EdgeKind, Graph, LabelLine, Node, NodeKind};

const FONT_FAMILY: &str = "DejaVu Sans Mono, Menlo, Consolas, monospace";
const TITLE_SIZE: f64 = 15.0;
const NODE_SIZE: f64 = 13.0;
const NOTE_SIZE: f64 = 11.0;
const LABEL_SIZE: f64 = 11.0;
/// Advance of one monospace glyph, as a fraction of the font size (0.602
/// for DejaVu Sans Mono, rounded up so estimates err on the wide side).
const GLYPH_EM: f64 = 0.61;
const LABEL_LINE: f64 = 14.0;
const NOTE_LINE: f64 = 14.0;

const MARGIN: f64 = 20.0;
const TITLE_BLOCK: f64 = 50.0;
const NODE_PAD_X: f64 = 14.0;
const NODE_PAD_Y: f64 = 9.0;
const NODE_MIN_WIDTH: f64 = 90.0;
const LABEL_PAD: f64 = 4.0;
/// Minimum horizontal space between two columns.
const MIN_GAP: f64 = 60.0;
/// Room for arrowheads on both ends of a forward edge, besides its label.
const GAP_ENDS: f64 = 28.0;
const ROW_GAP: f64 = 40.0;
/// Height of a self-loop arc above its node.
const LOOP_HEIGHT: f64 = 30.0;
/// Space between the lowest node and the first lane.
const LANES_TOP: f64 = 18.0;
const LANE_GAP: f64 = 12.0;
/// Horizontal distance between the legs of lanes leaving one node.
const LEG_SPACING: f64 = 12.0;
const CORNER: f64 = 8.0;

const EDGE_COLOR: &str = "#555555";
const TIMEOUT_COLOR: &str = "#c0620a";
const PREFIX_COLOR: &str = "#8a8a8a";

fn text_width(chars: usize, size: f64) -> f64 {
    chars as f64 * size * GLYPH_EM
}

/// Size of a label block (with its padding).
fn label_size(lines: &[LabelLine]) -> (f64, f64) {
    let chars = lines.iter().map(|l| l.chars()).max().unwrap_or(0);
    (
        text_width(chars, LABEL_SIZE) + 2.0 * LABEL_PAD,
        lines.len() as f64 * LABEL_LINE + 2.0 * LABEL_PAD,
    )
}

fn node_size(node: &Node) -> (f64, f64) {
    let title = text_width(node.title.chars().count(), NODE_SIZE);
    let notes = node
        .notes
        .iter()
        .map(|n| text_width(n.chars().count(), NOTE_SIZE))
        .fold(0.0, f64::max);
    let width = (title.max(notes) + 2.0 * NODE_PAD_X).max(NODE_MIN_WIDTH);
    let height = NODE_SIZE + 4.0 + node.notes.len() as f64 * NOTE_LINE + 2.0 * NODE_PAD_Y;
    (width, height)
}

/// Where a node is drawn: its centre and size.
#[derive(Debug, Clone, Copy, Default)]
struct Placed {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Placed {
    fn top(&self) -> f64 {
        self.y - self.h / 2.0
    }
    fn bottom(&self) -> f64 {
        self.y + self.h / 2.0
    }
    fn left(&self) -> f64 {
        self.x - self.w / 2.0
    }
    fn right(&self) -> f64 {
        self.x + self.w / 2.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    SelfLoop,
    Forward,
    /// Straight down to the node under it in the same column.
    Down,
    /// Index of the lane, 0 nearest to the nodes.
    Lane(usize),
}

/// Column of every node (see the module doc, step 1).
fn columns_of(graph: &Graph) -> Vec<usize> {
    let n = graph.nodes.len();
    let any = graph.any_node();
    let shift = usize::from(any.is_some());
    let mut column: Vec<Option<usize>> = vec![None; n];
    if let Some(a) = any {
        column[a] = Some(0);
    }
    let mut queue = std::collections::VecDeque::new();
    let mut next_free = shift;
    // Seed with the first state not yet placed (the initial state first).
    while let Some(seed) = (0..n).find(|&i| column[i].is_none()) {
        column[seed] = Some(next_free);
        queue.push_back(seed);
        while let Some(from) = queue.pop_front() {
            let depth = column[from].unwrap_or(0);
            next_free = next_free.max(depth + 1);
            for edge in &graph.edges {
                if edge.from == from && edge.kind == EdgeKind::Rows && column[edge.to].is_none() {
                    column[edge.to] = Some(depth + 1);
                    queue.push_back(edge.to);
                }
            }
        }
    }
    column.into_iter().map(|c| c.unwrap_or(0)).collect()
}

struct Layout {
    placed: Vec<Placed>,
    routes: Vec<Route>,
    /// Node index -> whether another node sits below it in its column.
    has_node_below: Vec<bool>,
    /// Left and right edges of each node's column.
    column_left: Vec<f64>,
    column_right: Vec<f64>,
    nodes_bottom: f64,
}

fn layout(graph: &Graph) -> Layout {
    let n = graph.nodes.len();
    let column = columns_of(graph);
    let column_count = column.iter().map(|c| c + 1).max().unwrap_or(0);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); column_count];
    // Order within a column: BFS discovery is approximated by the order of
    // the first edge reaching each node, falling back to declaration order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| {
        let first_in = graph
            .edges
            .iter()
            .position(|e| e.to == i && e.from != i && e.kind == EdgeKind::Rows)
            .unwrap_or(usize::MAX);
        (column[i], first_in, i)
    });
    for &i in &order {
        members[column[i]].push(i);
    }
    let mut grid_row = vec![0; n];
    for list in &members {
        for (r, &i) in list.iter().enumerate() {
            grid_row[i] = r;
        }
    }
    let row_count = members.iter().map(Vec::len).max().unwrap_or(0);

    let sizes: Vec<(f64, f64)> = graph.nodes.iter().map(node_size).collect();
    let routes: Vec<Route> = {
        let mut routes: Vec<Route> = graph
            .edges
            .iter()
            .map(|e| {
                let target_loops = graph.edges.iter().any(|o| o.from == e.to && o.to == e.to);
                if e.from == e.to {
                    Route::SelfLoop
                } else if e.kind == EdgeKind::Rows && column[e.to] == column[e.from] + 1 {
                    Route::Forward
                } else if e.kind == EdgeKind::Rows
                    && column[e.to] == column[e.from]
                    && grid_row[e.to] == grid_row[e.from] + 1
                    && !target_loops
                {
                    // A self-loop above the target would sit on the line.
                    Route::Down
                } else {
                    Route::Lane(0)
                }
            })
            .collect();
        // Lanes: provisional x by column index is enough to sort by span.
        let mut lanes: Vec<usize> = (0..routes.len())
            .filter(|&i| routes[i] == Route::Lane(0))
            .collect();
        lanes.sort_by_key(|&i| {
            let e = &graph.edges[i];
            (column[e.from].abs_diff(column[e.to]), i)
        });
        for (k, &i) in lanes.iter().enumerate() {
            routes[i] = Route::Lane(k);
        }
        routes
    };

    let mut column_width: Vec<f64> = vec![0.0; column_count];
    for i in 0..n {
        column_width[column[i]] = column_width[column[i]].max(sizes[i].0);
    }
    let mut gap: Vec<f64> = vec![MIN_GAP; column_count.saturating_sub(1)];
    for (e, route) in graph.edges.iter().zip(&routes) {
        let (lw, _) = label_size(&e.label);
        match route {
            Route::SelfLoop => {
                let c = column[e.from];
                column_width[c] = column_width[c].max(lw);
            }
            Route::Forward => {
                let c = column[e.from];
                gap[c] = gap[c].max(lw + GAP_ENDS);
            }
            Route::Down => {
                // The label hangs right of the column's centre line: keep
                // it inside the column, off the lines in the gaps.
                let c = column[e.from];
                column_width[c] = column_width[c].max(2.0 * (lw + 8.0));
            }
            Route::Lane(_) => {}
        }
    }

    // Vertical room above each grid row: self-loop labels, and labels of
    // straight edges that rise above the node's half height.
    let mut above: Vec<f64> = vec![0.0; row_count];
    let mut gap_below: Vec<f64> = vec![ROW_GAP; row_count];
    let mut row_height: Vec<f64> = vec![0.0; row_count];
    for i in 0..n {
        row_height[grid_row[i]] = row_height[grid_row[i]].max(sizes[i].1);
    }
    for (e, route) in graph.edges.iter().zip(&routes) {
        let (_, lh) = label_size(&e.label);
        let r = grid_row[e.from];
        match route {
            Route::SelfLoop => {
                above[r] = above[r].max(LOOP_HEIGHT + 8.0 + lh);
            }
            Route::Forward if grid_row[e.to] == r => {
                above[r] = above[r].max(lh + 6.0 - row_height[r] / 2.0);
            }
            Route::Down => gap_below[r] = gap_below[r].max(lh + 16.0),
            _ => {}
        }
    }

    let mut column_left = Vec::with_capacity(column_count);
    let mut x = MARGIN;
    for (c, width) in column_width.iter().enumerate() {
        column_left.push(x);
        x += width + gap.get(c).copied().unwrap_or(0.0);
    }
    let mut row_center = Vec::with_capacity(row_count);
    let mut y = MARGIN + TITLE_BLOCK;
    for r in 0..row_count {
        y += above[r];
        row_center.push(y + row_height[r] / 2.0);
        y += row_height[r] + gap_below[r];
    }

    let mut placed = vec![Placed::default(); n];
    let mut has_node_below = vec![false; n];
    let mut column_right = vec![0.0; n];
    let mut node_column_left = vec![0.0; n];
    for i in 0..n {
        let c = column[i];
        placed[i] = Placed {
            x: column_left[c] + column_width[c] / 2.0,
            y: row_center[grid_row[i]],
            w: sizes[i].0,
            h: sizes[i].1,
        };
        has_node_below[i] = grid_row[i] + 1 < members[c].len();
        column_right[i] = column_left[c] + column_width[c];
        node_column_left[i] = column_left[c];
    }
    let nodes_bottom = placed
        .iter()
        .map(Placed::bottom)
        .fold(MARGIN + TITLE_BLOCK, f64::max);
    Layout {
        placed,
        routes,
        has_node_below,
        column_left: node_column_left,
        column_right,
        nodes_bottom,
    }
}

/// Bounds of everything drawn, for the picture's size.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    max_x: f64,
    max_y: f64,
}

impl Bounds {
    fn include(&mut self, x: f64, y: f64) {
        self.max_x = self.max_x.max(x);
        self.max_y = self.max_y.max(y);
    }
}

pub fn render(graph: &Graph) -> String {
    let layout = layout(graph);
    let mut body = String::new();
    let mut bounds = Bounds {
        max_x: MARGIN,
        max_y: MARGIN,
    };

    // Title.
    let title = format!("program {}", graph.name);
    let _ = writeln!(
        body,
        r#"<text x="{MARGIN}" y="{:.1}" font-size="{TITLE_SIZE}" font-weight="bold">{}</text>"#,
        MARGIN + TITLE_SIZE,
        escape(&title)
    );
    let _ = writeln!(
        body,
        r##"<text x="{MARGIN}" y="{:.1}" font-size="{NOTE_SIZE}" fill="#666666">{}</text>"##,
        MARGIN + TITLE_SIZE + 18.0,
        escape(&graph.summary)
    );
    bounds.include(
        MARGIN + text_width(title.chars().count(), TITLE_SIZE),
        MARGIN + TITLE_BLOCK,
    );
    bounds.include(
        MARGIN + text_width(graph.summary.chars().count(), NOTE_SIZE),
        MARGIN + TITLE_BLOCK,
    );

    let lanes = lane_geometry(graph, &layout);
    let mut drawn: Vec<(usize, String, (f64, f64))> = Vec::new();
    for (index, edge) in graph.edges.iter().enumerate() {
        let (from, to) = (&layout.placed[edge.from], &layout.placed[edge.to]);
        let (d, label_at) = match layout.routes[index] {
            Route::SelfLoop => self_loop(from, edge),
            Route::Forward => {
                let gap = (layout.column_right[edge.from], layout.column_left[edge.to]);
                forward(from, to, gap, edge)
            }
            Route::Down => down(from, to, edge),
            Route::Lane(_) => match lanes.iter().find(|l| l.edge == index) {
                Some(lane) => (lane.path.clone(), lane.label_at),
                None => continue,
            },
        };
        drawn.push((index, d, label_at));
    }
    separate_forward_labels(graph, &layout, &mut drawn);

    let mut labels = String::new();
    for (index, d, label_at) in drawn {
        let edge = &graph.edges[index];
        let (color, dash, marker) = match edge.kind {
            EdgeKind::Rows => (EDGE_COLOR, "", "arrow"),
            EdgeKind::Timeout => (TIMEOUT_COLOR, r#" stroke-dasharray="6 4""#, "arrow-timeout"),
        };
        let _ = writeln!(
            body,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.4"{dash} marker-end="url(#{marker})"/>"#
        );
        let (lw, lh) = label_size(&edge.label);
        bounds.include(label_at.0 + lw, label_at.1 + lh);
        write_label(&mut labels, label_at, &edge.label, edge.kind);
    }
    if let Some(deepest) = lanes.iter().map(|l| l.line_y).reduce(f64::max) {
        bounds.include(MARGIN, deepest);
    }

    for (node, placed) in graph.nodes.iter().zip(&layout.placed) {
        write_node(&mut body, node, placed);
        bounds.include(placed.right(), placed.bottom());
    }
    // Labels last, so their backgrounds sit over any line they touch.
    body.push_str(&labels);

    // The default action, as a note under everything else.
    let note_top = bounds.max_y + 24.0;
    let note_lines = [
        graph.default_note.clone(),
        "(no key, or no row matches)".to_string(),
    ];
    let note_chars = note_lines
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let note_w = text_width(note_chars, NOTE_SIZE) + 2.0 * NODE_PAD_X;
    let note_h = 2.0 * NOTE_LINE + 2.0 * NODE_PAD_Y;
    let fold = 10.0;
    let _ = writeln!(
        body,
        r##"<path d="M{x0:.1},{y0:.1} H{x1:.1} L{x2:.1},{y1:.1} V{y2:.1} H{x0:.1} Z" fill="#fff8d6" stroke="#b8a45a"/>"##,
        x0 = MARGIN,
        y0 = note_top,
        x1 = MARGIN + note_w - fold,
        x2 = MARGIN + note_w,
        y1 = note_top + fold,
        y2 = note_top + note_h,
    );
    for (i, line) in note_lines.iter().enumerate() {
        let weight = if i == 0 { r#" font-weight="bold""# } else { "" };
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{:.1}" font-size="{NOTE_SIZE}"{weight}>{}</text>"#,
            MARGIN + NODE_PAD_X,
            note_top + NODE_PAD_Y + NOTE_LINE * (i as f64 + 1.0) - 3.0,
            escape(line)
        );
    }
    bounds.include(MARGIN + note_w, note_top + note_h);

    let width = (bounds.max_x + MARGIN).ceil();
    let height = (bounds.max_y + MARGIN).ceil();
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="{FONT_FAMILY}">"#
    );
    let _ = writeln!(out, "<title>{}</title>", escape(&title));
    out.push_str("<defs>\n");
    for (id, color) in [("arrow", EDGE_COLOR), ("arrow-timeout", TIMEOUT_COLOR)] {
        let _ = writeln!(
            out,
            r#"<marker id="{id}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>"#
        );
    }
    out.push_str("</defs>\n");
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    out.push('\n');
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

fn write_node(out: &mut String, node: &Node, p: &Placed) {
    let (fill, stroke, dash) = match node.kind {
        NodeKind::State { .. } => ("#eaf2fb", "#2f5f8f", ""),
        NodeKind::AnyState => ("#f4f4f4", "#888888", r#" stroke-dasharray="5 3""#),
    };
    let _ = writeln!(
        out,
        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="8" fill="{fill}" stroke="{stroke}" stroke-width="1.4"{dash}/>"#,
        p.left(),
        p.top(),
        p.w,
        p.h
    );
    if let NodeKind::State { initial: true, .. } = node.kind {
        // Double border marks the initial state.
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="5" fill="none" stroke="{stroke}" stroke-width="1"/>"#,
            p.left() + 3.5,
            p.top() + 3.5,
            p.w - 7.0,
            p.h - 7.0
        );
    }
    let style = match node.kind {
        NodeKind::State { .. } => r#" font-weight="bold""#,
        NodeKind::AnyState => r##" font-style="italic" fill="#555555""##,
    };
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="{NODE_SIZE}" text-anchor="middle"{style}>{}</text>"#,
        p.x,
        p.top() + NODE_PAD_Y + NODE_SIZE - 2.0,
        escape(&node.title)
    );
    for (i, note) in node.notes.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="{NOTE_SIZE}" text-anchor="middle" fill="{TIMEOUT_COLOR}">{}</text>"#,
            p.x,
            p.top() + NODE_PAD_Y + NODE_SIZE + 4.0 + NOTE_LINE * (i as f64 + 1.0) - 3.0,
            escape(note)
        );
    }
}

/// A label block with its top-left corner at `at`.
fn write_label(out: &mut String, at: (f64, f64), lines: &[LabelLine], kind: EdgeKind) {
    let (w, h) = label_size(lines);
    let _ = writeln!(
        out,
        r#"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" rx="3" fill="white" fill-opacity="0.9"/>"#,
        at.0, at.1
    );
    let color = match kind {
        EdgeKind::Rows => "#222222",
        EdgeKind::Timeout => TIMEOUT_COLOR,
    };
    for (i, line) in lines.iter().enumerate() {
        // Leading spaces would collapse in SVG text: indent by position.
        let text = line.text.trim_start();
        let indent = line.text.chars().count() - text.chars().count();
        let x = at.0 + LABEL_PAD + text_width(indent, LABEL_SIZE);
        let y = at.1 + LABEL_PAD + LABEL_LINE * (i as f64 + 1.0) - 3.5;
        let prefix = if line.prefix.is_empty() {
            String::new()
        } else {
            format!(
                r#"<tspan fill="{PREFIX_COLOR}">{}: </tspan>"#,
                escape(&line.prefix)
            )
        };
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{LABEL_SIZE}" fill="{color}" xml:space="preserve">{prefix}{}</text>"#,
            escape(text)
        );
    }
}

/// An arc over the node's top, the label centred above it.
fn self_loop(p: &Placed, edge: &Edge) -> (String, (f64, f64)) {
    let top = p.top();
    let d = format!(
        "M{:.1},{top:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{top:.1}",
        p.x - 12.0,
        p.x - 40.0,
        top - LOOP_HEIGHT * 4.0 / 3.0,
        p.x + 40.0,
        top - LOOP_HEIGHT * 4.0 / 3.0,
        p.x + 12.0,
    );
    let (lw, lh) = label_size(&edge.label);
    (d, (p.x - lw / 2.0, top - LOOP_HEIGHT - 4.0 - lh))
}

/// A vertical line from the bottom of `a` to the top of `b` under it, the
/// label to its right.
fn down(a: &Placed, b: &Placed, edge: &Edge) -> (String, (f64, f64)) {
    let (y1, y2) = (a.bottom(), b.top());
    let d = format!("M{:.1},{y1:.1} L{:.1},{y2:.1}", a.x, a.x);
    let (_, lh) = label_size(&edge.label);
    (d, (a.x + 6.0, (y1 + y2 - lh) / 2.0))
}

/// Forward labels sharing a gap may meet where their lines fan out: move
/// each one that overlaps an earlier one (top to bottom) just below it.
fn separate_forward_labels(
    graph: &Graph,
    layout: &Layout,
    drawn: &mut [(usize, String, (f64, f64))],
) {
    let mut forward: Vec<usize> = (0..drawn.len())
        .filter(|&k| layout.routes[drawn[k].0] == Route::Forward)
        .collect();
    forward.sort_by(|&a, &b| drawn[a].2 .1.total_cmp(&drawn[b].2 .1));
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    for k in forward {
        let (w, h) = label_size(&graph.edges[drawn[k].0].label);
        let (x, mut y) = drawn[k].2;
        while let Some(hit) = placed
            .iter()
            .find(|p| x < p.0 + p.2 && p.0 < x + w && y < p.1 + p.3 && p.1 < y + h)
        {
            y = hit.1 + hit.3 + 2.0;
        }
        drawn[k].2 .1 = y;
        placed.push((x, y, w, h));
    }
}

/// A straight line from the right side of `a` to the left side of `b`; the
/// label centred in the gap between their columns (which is sized for it),
/// above the line, or below it when the line descends so that labels of
/// lines fanning out from one node part ways.
fn forward(a: &Placed, b: &Placed, gap: (f64, f64), edge: &Edge) -> (String, (f64, f64)) {
    let (x1, y1, x2, y2) = (a.right(), a.y, b.left(), b.y);
    let d = format!("M{x1:.1},{y1:.1} L{x2:.1},{y2:.1}");
    let (lw, lh) = label_size(&edge.label);
    let mx = (gap.0 + gap.1) / 2.0;
    let t = if x2 > x1 { (mx - x1) / (x2 - x1) } else { 0.5 };
    let my = y1 + (y2 - y1) * t;
    // On a slope, move the label off the line by the rise over its
    // half-width too.
    let rise = ((y2 - y1) / (x2 - x1).max(1.0)).abs() * lw / 2.0;
    if y2 > y1 + 0.5 {
        (d, (mx - lw / 2.0, my + 4.0 + rise))
    } else {
        (d, (mx - lw / 2.0, my - 4.0 - lh - rise))
    }
}

struct Lane {
    edge: usize,
    path: String,
    label_at: (f64, f64),
    line_y: f64,
}

/// One end of a lane at a node: where its vertical leg runs.
struct Leg {
    edge: usize,
    lane: usize,
    is_source: bool,
    going_left: bool,
}

fn lane_geometry(graph: &Graph, layout: &Layout) -> Vec<Lane> {
    let mut lane_edges: Vec<(usize, usize)> = layout
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Route::Lane(k) => Some((*k, i)),
            _ => None,
        })
        .collect();
    lane_edges.sort();

    // Lane bands, top to bottom.
    let mut line_y = vec![0.0; lane_edges.len()];
    let mut cursor = layout.nodes_bottom + LANES_TOP;
    for &(k, i) in &lane_edges {
        let (_, lh) = label_size(&graph.edges[i].label);
        line_y[k] = cursor + lh + 4.0;
        cursor = line_y[k] + LANE_GAP;
    }

    // Legs per node, ordered so that lanes do not cross at the node:
    // left-going legs with the nearest lane leftmost, then right-going legs
    // with the nearest lane rightmost.
    let n = graph.nodes.len();
    let mut legs: Vec<Vec<Leg>> = (0..n).map(|_| Vec::new()).collect();
    for &(k, i) in &lane_edges {
        let e = &graph.edges[i];
        let (a, b) = (&layout.placed[e.from], &layout.placed[e.to]);
        legs[e.from].push(Leg {
            edge: i,
            lane: k,
            is_source: true,
            going_left: b.x < a.x,
        });
        legs[e.to].push(Leg {
            edge: i,
            lane: k,
            is_source: false,
            going_left: a.x < b.x,
        });
    }
    // (edge, is_source) -> x of its vertical leg and where it leaves the node.
    let mut leg_x: std::collections::HashMap<(usize, bool), (f64, (f64, f64))> =
        std::collections::HashMap::new();
    for (node, list) in legs.iter_mut().enumerate() {
        list.sort_by_key(|l| {
            if l.going_left {
                (0, l.lane as isize)
            } else {
                (1, -(l.lane as isize))
            }
        });
        let p = &layout.placed[node];
        let count = list.len();
        for (j, leg) in list.iter().enumerate() {
            let entry = if layout.has_node_below[node] {
                // Leave through the right side, then run down the gap.
                let x = layout.column_right[node] + 10.0 + LEG_SPACING * j as f64;
                let y = p.y + (j as f64 - (count as f64 - 1.0) / 2.0) * 6.0;
                (x, (p.right(), y))
            } else {
                let spread = LEG_SPACING.min((p.w - 16.0) / count.max(1) as f64);
                let x = p.x + (j as f64 - (count as f64 - 1.0) / 2.0) * spread;
                (x, (x, p.bottom()))
            };
            leg_x.insert((leg.edge, leg.is_source), entry);
        }
    }

    let mut lanes = Vec::new();
    for &(k, i) in &lane_edges {
        let (Some(&(xa, start)), Some(&(xb, end))) =
            (leg_x.get(&(i, true)), leg_x.get(&(i, false)))
        else {
            continue;
        };
        let y = line_y[k];
        let mut points = vec![start];
        if start.0 != xa {
            points.push((xa, start.1));
        }
        points.extend([(xa, y), (xb, y)]);
        if end.0 != xb {
            points.push((xb, end.1));
        }
        points.push(end);
        let path = rounded_path(&points);

        // Label: above the line, as central as possible without covering
        // the legs of deeper lanes that cross this band.
        let (lw, lh) = label_size(&graph.edges[i].label);
        let blockers: Vec<f64> = lane_edges
            .iter()
            .filter(|&&(k2, _)| k2 > k)
            .flat_map(|&(_, i2)| [(i2, true), (i2, false)])
            .filter_map(|key| leg_x.get(&key).map(|v| v.0))
            .chain([xa, xb])
            .collect();
        let (lo, hi) = (xa.min(xb), xa.max(xb));
        let centre = label_centre((lo + hi) / 2.0, lw, lo, hi, &blockers);
        let left = (centre - lw / 2.0).max(MARGIN);
        lanes.push(Lane {
            edge: i,
            path,
            label_at: (left, y - 3.0 - lh),
            line_y: y,
        });
    }
    lanes
}

/// The label centre nearest `ideal` whose block lies within `[lo, hi]` and
/// covers none of `blockers`; `ideal` itself when there is none.
fn label_centre(ideal: f64, width: f64, lo: f64, hi: f64, blockers: &[f64]) -> f64 {
    let half = width / 2.0 + 3.0;
    let fits = |c: f64| {
        c - half >= lo - 0.5
            && c + half <= hi + 0.5
            && blockers.iter().all(|&b| (b - c).abs() >= half)
    };
    let mut candidates = vec![ideal];
    for &b in blockers {
        candidates.push(b - half);
        candidates.push(b + half);
    }
    candidates
        .into_iter()
        .filter(|&c| fits(c))
        .min_by(|a, b| (a - ideal).abs().total_cmp(&(b - ideal).abs()))
        .unwrap_or(ideal)
}

/// An orthogonal polyline through `points` with rounded corners.
fn rounded_path(points: &[(f64, f64)]) -> String {
    let mut d = String::new();
    let Some(&(x0, y0)) = points.first() else {
        return d;
    };
    let _ = write!(d, "M{x0:.1},{y0:.1}");
    for w in 1..points.len() {
        let (px, py) = points[w - 1];
        let (cx, cy) = points[w];
        match points.get(w + 1) {
            Some(&(nx, ny)) => {
                let r_in = CORNER.min(dist(px, py, cx, cy) / 2.0);
                let r_out = CORNER.min(dist(cx, cy, nx, ny) / 2.0);
                let r = r_in.min(r_out);
                let (ax, ay) = toward(cx, cy, px, py, r);
                let (bx, by) = toward(cx, cy, nx, ny, r);
                let _ = write!(d, " L{ax:.1},{ay:.1} Q{cx:.1},{cy:.1} {bx:.1},{by:.1}");
            }
            None => {
                let _ = write!(d, " L{cx:.1},{cy:.1}");
            }
        }
    }
    d
}

fn dist(x1: f64, y1: f64, x2: f64, y2: f64) -> f64 {
    ((x2 - x1).powi(2) + (y2 - y1).powi(2)).sqrt()
}

/// The point at distance `r` from (x, y) toward (tx, ty).
fn toward(x: f64, y: f64, tx: f64, ty: f64, r: f64) -> (f64, f64) {
    let d = dist(x, y, tx, ty);
    if d == 0.0 {
        (x, y)
    } else {
        (x + (tx - x) * r / d, y + (ty - y) * r / d)
    }
}

/// Escape text for XML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_characters() {
        assert_eq!(
            escape("a < b && c > \"d\" 'e'"),
            "a &lt; b &amp;&amp; c &gt; &quot;d&quot; &apos;e&apos;"
        );
    }

    #[test]
    fn label_moves_off_a_crossing_leg() {
        // A leg at the ideal centre pushes the label to one side of it.
        let c = label_centre(100.0, 40.0, 0.0, 300.0, &[100.0]);
        assert!((c - 100.0).abs() >= 23.0, "{c}");
        // No room anywhere: keep the ideal position.
        assert_eq!(label_centre(100.0, 400.0, 0.0, 200.0, &[100.0]), 100.0);
    }

    #[test]
    fn corners_are_rounded() {
        let d = rounded_path(&[(0.0, 0.0), (0.0, 50.0), (80.0, 50.0)]);
        assert_eq!(d, "M0.0,0.0 L0.0,42.0 Q0.0,50.0 8.0,50.0 L80.0,50.0");
    }
}
