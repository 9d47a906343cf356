//! Graphviz DOT output. Node identifiers are generated (`s0`, `any`), so
//! only labels need quoting.

use std::fmt::Write;

use crate::graph::{EdgeKind, Graph, LabelLine, NodeKind};

pub fn render(graph: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(&graph.name));
    out.push_str("  rankdir=LR;\n");
    out.push_str("  labelloc=t;\n");
    let _ = writeln!(
        out,
        "  label={};",
        quote(&format!("program {}\n{}", graph.name, graph.summary))
    );
    out.push_str("  node [shape=box, style=rounded, fontname=\"monospace\", fontsize=11];\n");
    out.push_str("  edge [fontname=\"monospace\", fontsize=10];\n");

    for (i, node) in graph.nodes.iter().enumerate() {
        let mut label = node.title.clone();
        for note in &node.notes {
            label.push('\n');
            label.push_str(note);
        }
        let style = match node.kind {
            NodeKind::State { initial: true, .. } => ", peripheries=2",
            NodeKind::State { .. } => "",
            NodeKind::AnyState => ", style=\"rounded,dashed\", color=gray40",
        };
        let _ = writeln!(
            out,
            "  {} [label={}{style}];",
            node_id(graph, i),
            quote(&label)
        );
    }
    // The classic start marker: a dot with an arrow into the initial state.
    if graph
        .nodes
        .iter()
        .any(|n| matches!(n.kind, NodeKind::State { initial: true, .. }))
    {
        out.push_str("  __start [shape=point, width=0.12];\n");
        let _ = writeln!(out, "  __start -> {};", node_id(graph, 0));
    }
    let _ = writeln!(
        out,
        "  __default [shape=note, style=\"\", label={}];",
        quote(&format!(
            "{}\n(no key, or no row matches)",
            graph.default_note
        ))
    );

    for edge in &graph.edges {
        let label = left_justified(&edge.label);
        let style = match edge.kind {
            EdgeKind::Rows => "",
            EdgeKind::Timeout => ", style=dashed, color=darkorange3, fontcolor=darkorange3",
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label=\"{label}\"{style}];",
            node_id(graph, edge.from),
            node_id(graph, edge.to)
        );
    }
    out.push_str("}\n");
    out
}

fn node_id(graph: &Graph, index: usize) -> String {
    match graph.nodes.get(index).map(|n| n.kind) {
        Some(NodeKind::AnyState) => "any".to_string(),
        _ => format!("s{index}"),
    }
}

/// A DOT string literal; newlines become centred line breaks.
fn quote(text: &str) -> String {
    format!("\"{}\"", escape(text).replace('\n', "\\n"))
}

/// Escape what DOT gives meaning to inside a quoted string.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Lines ending in `\l`, which Graphviz left-aligns: the label rows line up.
fn left_justified(lines: &[LabelLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{}\\l", escape(&l.full())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_backslashes_and_quotes() {
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }

    #[test]
    fn labels_are_left_justified_per_line() {
        let lines = vec![
            LabelLine {
                prefix: "L3".to_string(),
                text: "* => drop".to_string(),
            },
            LabelLine {
                prefix: String::new(),
                text: "    a = \"x\"".to_string(),
            },
        ];
        assert_eq!(
            left_justified(&lines),
            "L3: * => drop\\l    a = \\\"x\\\"\\l"
        );
    }
}
