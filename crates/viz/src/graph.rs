//! The drawing model shared by the DOT and SVG writers: nodes, grouped
//! edges and their label lines, built once from a [`Program`].

use flowstate_lang::ir::{Program, StatePattern, Timeout};
use flowstate_lang::print;
use flowstate_wire::Field;

/// A node of the picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// The state's name, or "any state".
    pub title: String,
    /// Smaller lines under the title (the timeout).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// The state with this index in `Program::states`.
    State { index: usize, initial: bool },
    /// Stands for every state: the source of the `*` rows.
    AnyState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// Table rows.
    Rows,
    /// An expired entry reads as the target state.
    Timeout,
}

/// One line of an edge label: `prefix` is the row's `L12`, empty on
/// continuation lines (register updates) and timeout labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelLine {
    pub prefix: String,
    pub text: String,
}

impl LabelLine {
    /// The line as plain text, prefix included.
    pub fn full(&self) -> String {
        if self.prefix.is_empty() {
            self.text.clone()
        } else {
            format!("{}: {}", self.prefix, self.text)
        }
    }

    /// Length in characters, for layout with a monospace font.
    pub fn chars(&self) -> usize {
        self.full().chars().count()
    }
}

/// All rows (or the timeout) that lead from `from` to `to`, drawn as one edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Indices into [`Graph::nodes`].
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
    pub label: Vec<LabelLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub name: String,
    /// `hook xdp, flow ip.src`.
    pub summary: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// `default: pass`.
    pub default_note: String,
}

/// Label indent for the register updates under a row's line.
const UPDATE_INDENT: &str = "    ";

impl Graph {
    pub fn build(program: &Program) -> Graph {
        let state_count = program.states.len();
        let mut nodes: Vec<Node> = program
            .states
            .iter()
            .enumerate()
            .map(|(index, state)| Node {
                kind: NodeKind::State {
                    index,
                    initial: index == 0,
                },
                title: state.name.clone(),
                notes: state
                    .timeout
                    .map(|t| vec![timeout_text(program, index, &t)])
                    .unwrap_or_default(),
            })
            .collect();
        let any_node = program
            .rows
            .iter()
            .any(|r| r.state == StatePattern::Any)
            .then(|| {
                nodes.push(Node {
                    kind: NodeKind::AnyState,
                    title: "any state".to_string(),
                    notes: Vec::new(),
                });
                nodes.len() - 1
            });

        let mut edges: Vec<Edge> = Vec::new();
        for row in &program.rows {
            let sources: Vec<usize> = match &row.state {
                StatePattern::Any => any_node.into_iter().collect(),
                StatePattern::Set(ids) => ids
                    .iter()
                    .map(|id| id.0 as usize)
                    .filter(|&i| i < state_count)
                    .collect(),
            };
            let mut label = vec![LabelLine {
                prefix: format!("L{}", row.pos.line),
                text: format!(
                    "{} => {}",
                    print::row_items(program, row),
                    print::action(&row.action)
                ),
            }];
            label.extend(row.updates.iter().map(|u| LabelLine {
                prefix: String::new(),
                text: format!("{UPDATE_INDENT}{}", print::update(program, u)),
            }));
            label.extend(row.writes.iter().map(|w| LabelLine {
                prefix: String::new(),
                text: format!("{UPDATE_INDENT}{}", print::field_write(program, w)),
            }));
            let target = row.next.map(|n| n.0 as usize).filter(|&n| n < state_count);
            if row.next.is_some() && target.is_none() {
                // A next state the checker would have refused: nothing to draw.
                continue;
            }
            for from in sources {
                let to = target.unwrap_or(from);
                add_to_edge(&mut edges, from, to, EdgeKind::Rows, &label);
            }
        }

        for (index, state) in program.states.iter().enumerate() {
            let Some(timeout) = state.timeout else {
                continue;
            };
            let to = timeout.rollback.0 as usize;
            // Rolling back to itself only resets the registers: the node's
            // note says so and there is nothing to draw.
            if to != index && to < state_count {
                let label = vec![LabelLine {
                    prefix: String::new(),
                    text: format!("timeout {}", timeout_limits(&timeout)),
                }];
                add_to_edge(&mut edges, index, to, EdgeKind::Timeout, &label);
            }
        }

        let mut summary = format!("hook {}", print::hook(program.hook));
        if !program.lookup_key.is_empty() {
            summary.push_str(&format!(", flow {}", field_names(&program.lookup_key)));
        }
        if program.update_key != program.lookup_key {
            summary.push_str(&format!(", update {}", field_names(&program.update_key)));
        }
        Graph {
            name: program.name.clone(),
            summary,
            nodes,
            edges,
            default_note: format!("default: {}", print::action(&program.default_action)),
        }
    }

    /// Index of the "any state" node, if the program has `*` rows.
    pub fn any_node(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.kind == NodeKind::AnyState)
    }
}

fn add_to_edge(edges: &mut Vec<Edge>, from: usize, to: usize, kind: EdgeKind, label: &[LabelLine]) {
    match edges
        .iter_mut()
        .find(|e| e.from == from && e.to == to && e.kind == kind)
    {
        Some(edge) => edge.label.extend_from_slice(label),
        None => edges.push(Edge {
            from,
            to,
            kind,
            label: label.to_vec(),
        }),
    }
}

/// `idle 30s` / `idle 30s, hard 1m`.
fn timeout_limits(t: &Timeout) -> String {
    let mut parts = Vec::new();
    if let Some(idle) = t.idle_ns {
        parts.push(format!("idle {}", print::duration(idle)));
    }
    if let Some(hard) = t.hard_ns {
        parts.push(format!("hard {}", print::duration(hard)));
    }
    parts.join(", ")
}

/// The note inside a state's node: `idle 30s -> DEFAULT`.
fn timeout_text(program: &Program, index: usize, t: &Timeout) -> String {
    let target = program
        .states
        .get(t.rollback.0 as usize)
        .map_or("?", |s| s.name.as_str());
    if t.rollback.0 as usize == index {
        format!("{} -> reset", timeout_limits(t))
    } else {
        format!("{} -> {target}", timeout_limits(t))
    }
}

fn field_names(fields: &[Field]) -> String {
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    names.join(", ")
}
