//! Syntax tree -> [`ir::Program`]: resolves names, checks widths and
//! constants, folds constant expressions, and analyses the table
//! (unreachable rows, coverage).
//!
//! Every error is collected; the program is returned only when there are
//! none. Checker errors are user errors: an `ir::Program` that comes out
//! of here satisfies every invariant listed in [`crate::ir`].

mod table;

use std::collections::HashMap;

use flowstate_wire::field::TCP_FLAG_NAMES;
use flowstate_wire::{Field, Layer};

use crate::diag::{Collector, Diagnostic, LineIndex, Severity};
use crate::ir::{self, BinOp, Expr, RegTarget, StateId};
use crate::syntax::ast::{self, DeclKind, ExprKind, ItemKind, MatchOp, PatternAst};
use crate::syntax::parser::{is_prefix_length, suggest_help};
use crate::syntax::Span;

/// Default state-table capacity (`flows` absent).
pub const DEFAULT_CAPACITY: u32 = 65_536;
/// Largest accepted `flows N`.
pub const MAX_CAPACITY: u32 = 16_777_216;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Words that cannot name a state, register, global or const.
pub(crate) const RESERVED: [&str; 14] = [
    "now",
    "min",
    "max",
    "not",
    "in",
    "has",
    "next",
    "pass",
    "drop",
    "tx",
    "redirect",
    "controller",
    "then",
    "end",
];

/// Check a parsed file. `source` is only used for row positions.
pub fn check(file: &ast::File, source: &str) -> (Option<ir::Program>, Vec<Diagnostic>) {
    let mut cx = Checker {
        lines: LineIndex::new(source),
        diags: Collector::default(),
        consts: HashMap::new(),
        const_order: Vec::new(),
        registers: HashMap::new(),
        register_names: Vec::new(),
        globals: HashMap::new(),
        global_names: Vec::new(),
        states: HashMap::new(),
        state_names: Vec::new(),
        value_names: HashMap::new(),
        all_value_names: HashMap::new(),
    };
    for decl in &file.decls {
        let (kind, bindings) = match &decl.kind {
            DeclKind::Const(b) => ("const", std::slice::from_ref(b)),
            DeclKind::Registers(b) => ("register", b.as_slice()),
            DeclKind::Globals(b) => ("global", b.as_slice()),
            _ => continue,
        };
        for b in bindings {
            cx.all_value_names
                .entry(b.name.name.clone())
                .or_insert(kind);
        }
    }
    let program = cx.program(file);
    let has_errors = cx.diags.has_errors();
    let program = if has_errors { None } else { program };
    (program, cx.diags.into_vec())
}

struct Checker<'a> {
    /// Row positions, found once for the whole text.
    lines: LineIndex<'a>,
    diags: Collector,
    consts: HashMap<String, i64>,
    const_order: Vec<String>,
    registers: HashMap<String, ir::RegId>,
    register_names: Vec<String>,
    globals: HashMap<String, ir::GlobalId>,
    global_names: Vec<String>,
    states: HashMap<String, StateId>,
    state_names: Vec<String>,
    /// Where each const/register/global name was declared.
    value_names: HashMap<String, Span>,
    /// Every const/register/global name in the file and what it is, known
    /// before any is declared, to explain why a name is not visible yet.
    all_value_names: HashMap<String, &'static str>,
}

/// What an expression may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// consts, globals, `flows`, timeouts, pattern values: literals and
    /// consts only.
    Const,
    /// A register's initial value: also `now` and packet fields.
    RegisterInit,
    /// A row: everything.
    Row,
}

/// The single-valued declarations, first occurrence of each.
#[derive(Default)]
struct Singles<'f> {
    program: Option<&'f ast::Ident>,
    hook: Option<ast::HookKind>,
    flow: Option<(&'f [ast::Ident], Span)>,
    update: Option<(&'f [ast::Ident], Span)>,
    states: Option<&'f [ast::Ident]>,
    flows: Option<(&'f ast::Expr, Option<ast::PolicyKind>)>,
    default: Option<(&'f ast::Verdict, Span)>,
}

impl Checker<'_> {
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// The "did you mean" help of an error, worked out only when the error
    /// will be shown: it compares the name with every declared one, and
    /// doing that for thousands of folded repeats was quadratic.
    fn suggestion(&self, message: &str, label: &str, help: impl FnOnce() -> String) -> String {
        if self.diags.would_fold(Severity::Error, message, label) {
            String::new()
        } else {
            help()
        }
    }

    fn program(&mut self, file: &ast::File) -> Option<ir::Program> {
        let singles = self.singles(file);
        let at_start = 0..0;
        let missing = |what: &str, help: &str| {
            Diagnostic::error(format!("missing `{what}` declaration"), 0..0, "required")
                .with_help(help.to_string())
        };
        if singles.program.is_none() {
            self.err(missing("program", "start the file with `program NAME`"));
        }
        if singles.hook.is_none() {
            self.err(missing(
                "hook",
                "declare where it attaches: `hook xdp`, `hook tc ingress` or `hook tc egress`",
            ));
        }
        if singles.flow.is_none() {
            self.err(missing(
                "flow",
                "declare the lookup key, e.g. `flow ip.src` or `flow ip.src, tcp.sport`",
            ));
        }
        if singles.states.is_none() {
            self.err(missing(
                "states",
                "declare the states, e.g. `states CLOSED, OPEN`",
            ));
        }
        if file.table.is_none() {
            self.err(
                Diagnostic::error("missing `table`", at_start, "required")
                    .with_help("end the program with `table`, one row per line, then `end`"),
            );
        }

        let states = self.declare_states(singles.states.unwrap_or(&[]));
        self.declare_consts(file);
        let registers = self.declare_registers(file);
        let globals = self.declare_globals(file);

        let hook = singles.hook.map(|h| match h {
            ast::HookKind::Xdp => ir::Hook::Xdp,
            ast::HookKind::TcIngress => ir::Hook::TcIngress,
            ast::HookKind::TcEgress => ir::Hook::TcEgress,
        });
        let lookup_key = singles.flow.as_ref().map(|(f, _)| self.key(f));
        let update_key = match &singles.update {
            Some((f, span)) => {
                let update = self.key(f);
                if let Some(lookup) = &lookup_key {
                    self.same_key_layout(lookup, &update, span.clone());
                }
                Some(update)
            }
            None => lookup_key.clone(),
        };
        let states = self.timeouts(file, states);
        let (capacity, full_policy) = self.capacity(singles.flows);
        let default_action = match singles.default {
            Some((verdict, _)) => self.verdict(verdict, false),
            None => Some(ir::Action::Pass),
        };

        let mut rows = Vec::new();
        let mut row_spans = Vec::new();
        if let Some(t) = &file.table {
            for row in &t.rows {
                if let Some(r) = self.row(row) {
                    rows.push(r);
                    row_spans.push(row.span.clone());
                }
            }
        }

        let program = ir::Program {
            name: singles.program?.name.clone(),
            hook: hook?,
            lookup_key: lookup_key?,
            update_key: update_key?,
            states,
            registers,
            globals,
            rows,
            default_action: default_action?,
            capacity,
            full_policy,
        };
        if self.diags.has_errors() {
            return None;
        }
        if singles.default.is_none() {
            self.absent_key_warnings(&singles);
            if let Some(t) = &file.table {
                self.coverage_warning(&program, &t.keyword);
            }
        }
        let warnings = table::unreachable_rows(&program, &row_spans, &self.lines);
        self.diags.extend(warnings);
        Some(program)
    }

    /// The first of each single-valued declaration; later ones are errors.
    fn singles<'f>(&mut self, file: &'f ast::File) -> Singles<'f> {
        let mut s = Singles::default();
        let mut first_seen: HashMap<&'static str, Span> = HashMap::new();
        for decl in &file.decls {
            let name = match &decl.kind {
                DeclKind::Program(id) => {
                    s.program.get_or_insert(id);
                    "program"
                }
                DeclKind::Hook(h) => {
                    s.hook.get_or_insert(*h);
                    "hook"
                }
                DeclKind::Flow(f) => {
                    s.flow.get_or_insert((f, decl.span.clone()));
                    "flow"
                }
                DeclKind::Update(f) => {
                    s.update.get_or_insert((f, decl.span.clone()));
                    "update"
                }
                DeclKind::States(n) => {
                    s.states.get_or_insert(n);
                    "states"
                }
                DeclKind::Flows { capacity, policy } => {
                    s.flows.get_or_insert((capacity, *policy));
                    "flows"
                }
                DeclKind::Default(v) => {
                    s.default.get_or_insert((v, decl.span.clone()));
                    "default"
                }
                DeclKind::Timeout { .. }
                | DeclKind::Registers(_)
                | DeclKind::Globals(_)
                | DeclKind::Const(_) => continue,
            };
            if let Some(first) = first_seen.get(name) {
                let first = first.clone();
                self.err(
                    Diagnostic::error(
                        format!("duplicate `{name}` declaration"),
                        decl.keyword.clone(),
                        "declared again here",
                    )
                    .with_note(first, "first declared here")
                    .with_help(format!("a program has one `{name}` line")),
                );
            } else {
                first_seen.insert(name, decl.keyword.clone());
            }
        }
        s
    }

    // ---- names ---------------------------------------------------------

    /// Reject reserved words and dotted names as user names.
    fn check_name(&mut self, id: &ast::Ident, what: &str) -> bool {
        let n = id.name.as_str();
        if RESERVED.contains(&n) {
            self.err(
                Diagnostic::error(
                    format!("`{n}` is a reserved word"),
                    id.span.clone(),
                    format!("cannot name a {what}"),
                )
                .with_help(format!("reserved words: {}", RESERVED.join(", "))),
            );
            return false;
        }
        if TCP_FLAG_NAMES.contains(&n) {
            self.err(
                Diagnostic::error(
                    format!("`{n}` is a TCP flag name"),
                    id.span.clone(),
                    format!("cannot name a {what}"),
                )
                .with_help(format!("TCP flag names: {}", TCP_FLAG_NAMES.join(", "))),
            );
            return false;
        }
        if n.contains('.') || n.contains(':') {
            self.err(
                Diagnostic::error(
                    format!("invalid {what} name `{n}`"),
                    id.span.clone(),
                    "names may not contain `.` or `:`",
                )
                .with_help("dotted names are packet fields; use letters, digits and `_`"),
            );
            return false;
        }
        true
    }

    /// Register a const/register/global name; false if taken.
    fn claim_value_name(&mut self, id: &ast::Ident, what: &str) -> bool {
        if !self.check_name(id, what) {
            return false;
        }
        if let Some(first) = self.value_names.get(&id.name) {
            let first = first.clone();
            self.err(
                Diagnostic::error(
                    format!("duplicate name `{}`", id.name),
                    id.span.clone(),
                    "already declared",
                )
                .with_note(first, "first declared here")
                .with_help("consts, registers and globals share one namespace; rename one"),
            );
            return false;
        }
        self.value_names.insert(id.name.clone(), id.span.clone());
        true
    }

    fn declare_states(&mut self, names: &[ast::Ident]) -> Vec<ir::State> {
        let mut states = Vec::new();
        let mut first: HashMap<&str, Span> = HashMap::new();
        for id in names {
            if !self.check_name(id, "state") {
                continue;
            }
            if let Some(prev) = first.get(id.name.as_str()) {
                let prev = prev.clone();
                self.err(
                    Diagnostic::error(
                        format!("duplicate state `{}`", id.name),
                        id.span.clone(),
                        "already declared",
                    )
                    .with_note(prev, "first declared here"),
                );
                continue;
            }
            let Ok(index) = u16::try_from(states.len()) else {
                self.err(Diagnostic::error(
                    "too many states",
                    id.span.clone(),
                    "at most 65536 states",
                ));
                break;
            };
            first.insert(&id.name, id.span.clone());
            self.states.insert(id.name.clone(), StateId(index));
            self.state_names.push(id.name.clone());
            states.push(ir::State {
                name: id.name.clone(),
                timeout: None,
            });
        }
        states
    }

    fn declare_consts(&mut self, file: &ast::File) {
        for decl in &file.decls {
            if let DeclKind::Const(b) = &decl.kind {
                // Folded before the name is visible: a const cannot refer
                // to itself or to a later const.
                let value = self.lower_expr(&b.value, Ctx::Const);
                if self.claim_value_name(&b.name, "const") {
                    self.const_order.push(b.name.name.clone());
                    let v = match value {
                        Some(Expr::Const(v)) => v,
                        // The error is already reported; 0 avoids a
                        // cascade of "unknown name" errors.
                        _ => 0,
                    };
                    self.consts.insert(b.name.name.clone(), v);
                }
            }
        }
    }

    fn declare_registers(&mut self, file: &ast::File) -> Vec<ir::Register> {
        let bindings: Vec<&ast::Binding> = file
            .decls
            .iter()
            .filter_map(|d| match &d.kind {
                DeclKind::Registers(b) => Some(b.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        // Names first, so that an initial value that reads a register is
        // reported as such, not as an unknown name.
        let mut registers = Vec::new();
        for b in &bindings {
            if !self.claim_value_name(&b.name, "register") {
                continue;
            }
            let Ok(index) = u16::try_from(self.register_names.len()) else {
                self.err(Diagnostic::error(
                    "too many registers",
                    b.name.span.clone(),
                    "at most 65536",
                ));
                break;
            };
            self.registers.insert(b.name.name.clone(), ir::RegId(index));
            self.register_names.push(b.name.name.clone());
            registers.push(b);
        }
        registers
            .into_iter()
            .map(|b| ir::Register {
                name: b.name.name.clone(),
                init: self
                    .lower_expr(&b.value, Ctx::RegisterInit)
                    .unwrap_or(Expr::Const(0)),
            })
            .collect()
    }

    fn declare_globals(&mut self, file: &ast::File) -> Vec<ir::Global> {
        let mut globals = Vec::new();
        for decl in &file.decls {
            let DeclKind::Globals(bindings) = &decl.kind else {
                continue;
            };
            for b in bindings {
                let init = match self.lower_expr(&b.value, Ctx::Const) {
                    Some(Expr::Const(v)) => v,
                    _ => 0,
                };
                if !self.claim_value_name(&b.name, "global") {
                    continue;
                }
                let Ok(index) = u16::try_from(self.global_names.len()) else {
                    self.err(Diagnostic::error(
                        "too many globals",
                        b.name.span.clone(),
                        "at most 65536",
                    ));
                    break;
                };
                self.globals
                    .insert(b.name.name.clone(), ir::GlobalId(index));
                self.global_names.push(b.name.name.clone());
                globals.push(ir::Global {
                    name: b.name.name.clone(),
                    init,
                });
            }
        }
        globals
    }

    fn state(&mut self, id: &ast::Ident) -> Option<StateId> {
        if let Some(s) = self.states.get(&id.name) {
            return Some(*s);
        }
        let message = format!("unknown state `{}`", id.name);
        let label = "not a declared state";
        let help = self.suggestion(&message, label, || {
            suggest_help(
                &id.name,
                self.state_names.iter().map(String::as_str),
                "states",
            )
        });
        self.err(Diagnostic::error(message, id.span.clone(), label).with_help(help));
        None
    }

    fn field(&mut self, id: &ast::Ident) -> Option<Field> {
        if let Some(f) = Field::from_name(&id.name) {
            return Some(f);
        }
        let help = suggest_help(&id.name, Field::ALL.iter().map(|f| f.name()), "fields");
        self.err(
            Diagnostic::error(
                format!("unknown field `{}`", id.name),
                id.span.clone(),
                "not a packet field",
            )
            .with_help(help),
        );
        None
    }

    fn key(&mut self, names: &[ast::Ident]) -> Vec<Field> {
        let mut fields: Vec<Field> = Vec::new();
        for id in names {
            let Some(f) = self.field(id) else { continue };
            if fields.contains(&f) {
                self.err(
                    Diagnostic::error(
                        format!("`{f}` appears twice in the key"),
                        id.span.clone(),
                        "repeated",
                    )
                    .with_help("name each field once"),
                );
                continue;
            }
            fields.push(f);
        }
        fields
    }

    /// The update key indexes the same table as the lookup key, so it must
    /// pack to the same bytes: as many fields, each as wide as its partner
    /// (`flow eth.dst` / `update eth.src`).
    fn same_key_layout(&mut self, lookup: &[Field], update: &[Field], span: Span) {
        let widths = |k: &[Field]| k.iter().map(|f| f.key_bytes()).collect::<Vec<_>>();
        if widths(lookup) != widths(update) {
            let show = |k: &[Field]| {
                k.iter()
                    .map(|f| format!("{f} ({} bytes)", f.key_bytes()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            self.err(
                Diagnostic::error(
                    "the update key does not have the lookup key's layout",
                    span,
                    "fields differ in number or width from `flow`",
                )
                .with_help(format!(
                    "both keys index one table: pair each `flow` field with an `update` field of the \
                     same width; flow is {}, update is {}",
                    show(lookup),
                    show(update)
                )),
            );
        }
    }

    // ---- declarations --------------------------------------------------

    fn timeouts(&mut self, file: &ast::File, mut states: Vec<ir::State>) -> Vec<ir::State> {
        let mut seen: HashMap<StateId, Span> = HashMap::new();
        for decl in &file.decls {
            let DeclKind::Timeout {
                state,
                idle,
                hard,
                rollback,
            } = &decl.kind
            else {
                continue;
            };
            let id = self.state(state);
            let idle_ns = idle.as_ref().and_then(|e| self.duration(e));
            let hard_ns = hard.as_ref().and_then(|e| self.duration(e));
            let rollback_id = match rollback {
                Some(r) => self.state(r),
                None => Some(StateId(0)),
            };
            let Some(id) = id else { continue };
            if let Some(first) = seen.get(&id) {
                let first = first.clone();
                self.err(
                    Diagnostic::error(
                        format!("second timeout for state `{}`", state.name),
                        decl.keyword.clone(),
                        "state already has a timeout",
                    )
                    .with_note(first, "first timeout here")
                    .with_help("put `idle`, `hard` and `rollback` on one line"),
                );
                continue;
            }
            seen.insert(id, decl.keyword.clone());
            if let (Some(rollback), Some(s)) = (rollback_id, states.get_mut(id.0 as usize)) {
                s.timeout = Some(ir::Timeout {
                    idle_ns,
                    hard_ns,
                    rollback,
                });
            }
        }
        states
    }

    /// A positive constant number of nanoseconds.
    fn duration(&mut self, e: &ast::Expr) -> Option<i64> {
        let v = self.const_value(e)?;
        if v <= 0 {
            self.err(
                Diagnostic::error(
                    "timeout must be positive",
                    e.span.clone(),
                    format!("this is {v} ns"),
                )
                .with_help("write a duration like `30s` or `500ms`"),
            );
            return None;
        }
        Some(v)
    }

    fn capacity(
        &mut self,
        flows: Option<(&ast::Expr, Option<ast::PolicyKind>)>,
    ) -> (u32, ir::FullPolicy) {
        let Some((e, policy)) = flows else {
            return (DEFAULT_CAPACITY, ir::FullPolicy::EvictLeastRecent);
        };
        let policy = match policy {
            Some(ast::PolicyKind::Refuse) => ir::FullPolicy::RefuseNew,
            _ => ir::FullPolicy::EvictLeastRecent,
        };
        let capacity = match self.const_value(e) {
            Some(v) if (1..=i64::from(MAX_CAPACITY)).contains(&v) => v as u32,
            Some(v) => {
                self.err(
                    Diagnostic::error(
                        "flow capacity out of range",
                        e.span.clone(),
                        format!("this is {v}"),
                    )
                    .with_help(format!("`flows N` takes N from 1 to {MAX_CAPACITY}")),
                );
                DEFAULT_CAPACITY
            }
            None => DEFAULT_CAPACITY,
        };
        (capacity, policy)
    }

    /// `in_row`: a row's verdict (the default action cannot redirect to a
    /// register).
    fn verdict(&mut self, v: &ast::Verdict, in_row: bool) -> Option<ir::Action> {
        Some(match v {
            ast::Verdict::Pass => ir::Action::Pass,
            ast::Verdict::Drop => ir::Action::Drop,
            ast::Verdict::Tx => ir::Action::Tx,
            ast::Verdict::Controller(then) => ir::Action::Controller {
                then: then.unwrap_or(ir::ControllerThen::Pass),
            },
            ast::Verdict::Redirect {
                target: name,
                quoted,
            } => {
                let n = &name.name;
                let register = match (self.registers.get(n), self.globals.get(n)) {
                    _ if *quoted => None,
                    (Some(r), _) => Some(RegTarget::Flow(*r)),
                    (None, Some(g)) => Some(RegTarget::Global(*g)),
                    (None, None) => None,
                };
                if let Some(port) = register {
                    if !in_row {
                        self.err(
                            Diagnostic::error(
                                format!("the default action cannot redirect to register `{n}`"),
                                name.span.clone(),
                                "a register",
                            )
                            .with_help(format!(
                                "the default action also runs when no flow entry could be read \
                                 (no key, full table), so it has no register value: name an \
                                 interface, or write `redirect \"{n}\"` for an interface called {n}"
                            )),
                        );
                        return None;
                    }
                    return Some(ir::Action::RedirectPort {
                        port,
                        name: n.clone(),
                    });
                }
                let valid = !n.is_empty()
                    && n.len() <= MAX_IFNAME
                    && !n.contains(|c: char| c == '/' || c.is_whitespace() || c == ':');
                if !valid {
                    self.err(
                        Diagnostic::error(
                            format!("invalid interface name `{n}`"),
                            name.span.clone(),
                            "not a valid Linux interface name",
                        )
                        .with_help(format!(
                            "an interface name has 1 to {MAX_IFNAME} bytes, without `/`, `:` or spaces"
                        )),
                    );
                    return None;
                }
                ir::Action::Redirect { ifname: n.clone() }
            }
        })
    }

    // ---- expressions ---------------------------------------------------

    /// Fold `e` to a constant; reports an error if it is not one.
    fn const_value(&mut self, e: &ast::Expr) -> Option<i64> {
        match self.lower_expr(e, Ctx::Const)? {
            Expr::Const(v) => Some(v),
            // Unreachable in practice: in `Ctx::Const` every non-constant
            // leaf is an error. Kept total for safety.
            _ => None,
        }
    }

    /// Lower and fold an expression. `None` means an error was reported.
    fn lower_expr(&mut self, e: &ast::Expr, ctx: Ctx) -> Option<Expr> {
        match &e.kind {
            ExprKind::Lit(_, v) => {
                if *v > u128::from(u64::MAX) {
                    self.err(
                        Diagnostic::error(
                            "value too wide for an expression",
                            e.span.clone(),
                            "more than 64 bits",
                        )
                        .with_help(
                            "expressions are 64-bit; 128-bit values (IPv6 addresses) are only \
                             for patterns",
                        ),
                    );
                    return None;
                }
                // Values above i64::MAX keep their bit pattern.
                Some(Expr::Const(*v as u64 as i64))
            }
            ExprKind::Now => {
                if ctx == Ctx::Const {
                    self.err(not_constant(e, "`now`"));
                    return None;
                }
                Some(Expr::Now)
            }
            ExprKind::Name(n) => self.lower_name(n, e, ctx),
            ExprKind::Neg(inner) => {
                let v = self.lower_expr(inner, ctx)?;
                Some(match v {
                    Expr::Const(c) => Expr::Const(c.wrapping_neg()),
                    other => Expr::Binary(BinOp::Sub, Box::new(Expr::Const(0)), Box::new(other)),
                })
            }
            ExprKind::Binary(op, a, b) => {
                let a = self.lower_expr(a, ctx);
                let rhs = self.lower_expr(b, ctx);
                let (a, rhs) = (a?, rhs?);
                if matches!(op, BinOp::Div | BinOp::Mod) {
                    match rhs {
                        Expr::Const(0) => {
                            self.err(
                                Diagnostic::error(
                                    if *op == BinOp::Div {
                                        "division by zero"
                                    } else {
                                        "modulo by zero"
                                    },
                                    b.span.clone(),
                                    "this is 0",
                                )
                                .with_help("the divisor must be a non-zero constant"),
                            );
                            return None;
                        }
                        Expr::Const(_) => {}
                        _ => {
                            self.err(
                                Diagnostic::error(
                                    "divisor must be a constant",
                                    b.span.clone(),
                                    "not a constant",
                                )
                                .with_help(
                                    "`/` and `%` take a non-zero constant on the right; \
                                     for powers of two, `>>` and `&` work on any value",
                                ),
                            );
                            return None;
                        }
                    }
                }
                Some(match (a, rhs) {
                    (Expr::Const(x), Expr::Const(y)) => Expr::Const(op.eval(x, y)),
                    (x, y) => Expr::Binary(*op, Box::new(x), Box::new(y)),
                })
            }
        }
    }

    fn lower_name(&mut self, n: &str, e: &ast::Expr, ctx: Ctx) -> Option<Expr> {
        if n.contains('.') {
            let field = self.field(&ast::Ident {
                name: n.to_string(),
                span: e.span.clone(),
            })?;
            if !field.fits_register() {
                self.err(wide_field(field, e.span.clone()));
                return None;
            }
            if ctx == Ctx::Const {
                self.err(not_constant(e, &format!("field `{n}`")));
                return None;
            }
            return Some(Expr::Field(field));
        }
        if let Some(v) = self.consts.get(n) {
            return Some(Expr::Const(*v));
        }
        if let Some(r) = self.registers.get(n) {
            return match ctx {
                Ctx::Row => Some(Expr::Reg(*r)),
                Ctx::RegisterInit => {
                    self.err(
                        Diagnostic::error(
                            "register initial value reads a register",
                            e.span.clone(),
                            "a register",
                        )
                        .with_help("initial values may use constants, `now` and packet fields"),
                    );
                    None
                }
                Ctx::Const => {
                    self.err(not_constant(e, &format!("register `{n}`")));
                    None
                }
            };
        }
        if let Some(g) = self.globals.get(n) {
            return match ctx {
                Ctx::Row => Some(Expr::Global(*g)),
                Ctx::RegisterInit => {
                    self.err(
                        Diagnostic::error(
                            "register initial value reads a global",
                            e.span.clone(),
                            "a global",
                        )
                        .with_help("initial values may use constants, `now` and packet fields"),
                    );
                    None
                }
                Ctx::Const => {
                    self.err(not_constant(e, &format!("global `{n}`")));
                    None
                }
            };
        }
        if let Some(bit) = TCP_FLAG_NAMES.iter().position(|f| *f == n) {
            return Some(Expr::Const(1 << bit));
        }
        let message = format!("unknown name `{n}`");
        let label = "not a const, register or global";
        let mut help = self.suggestion(&message, label, || {
            let mut choices: Vec<&str> = self.const_order.iter().map(String::as_str).collect();
            if ctx != Ctx::Const {
                choices.extend(self.register_names.iter().map(String::as_str));
            }
            if ctx == Ctx::Row {
                choices.extend(self.global_names.iter().map(String::as_str));
            }
            suggest_help(n, choices, "names in scope")
        });
        match self.all_value_names.get(n).copied() {
            Some(kind @ ("register" | "global")) if ctx == Ctx::Const => {
                self.err(not_constant(e, &format!("{kind} `{n}`")));
                return None;
            }
            Some("global") if ctx == Ctx::RegisterInit => {
                self.err(
                    Diagnostic::error(
                        "register initial value reads a global",
                        e.span.clone(),
                        "a global",
                    )
                    .with_help("initial values may use constants, `now` and packet fields"),
                );
                return None;
            }
            Some(_) => {
                help = format!("`{n}` is declared later; a const may only use earlier consts")
            }
            None if self.states.contains_key(n) => {
                help = format!("`{n}` is a state; states appear only in state patterns and `next`")
            }
            None => {}
        }
        self.err(Diagnostic::error(message, e.span.clone(), label).with_help(help));
        None
    }

    // ---- rows ----------------------------------------------------------

    fn row(&mut self, row: &ast::Row) -> Option<ir::Row> {
        let (line, column) = self.lines.line_col(row.span.start);
        let mut ok = true;
        let state = match &row.state {
            ast::StatePat::Any(_) => ir::StatePattern::Any,
            ast::StatePat::Names(names) => {
                let mut ids = Vec::new();
                for n in names {
                    match self.state(n) {
                        Some(id) => ids.push(id),
                        None => ok = false,
                    }
                }
                ids.sort();
                ids.dedup();
                ir::StatePattern::Set(ids)
            }
        };
        let mut fields = Vec::new();
        let mut conditions = Vec::new();
        for item in &row.items {
            match self.item(item) {
                Some(Lowered::Field(f)) => fields.push(f),
                Some(Lowered::Cond(c)) => conditions.push(c),
                None => ok = false,
            }
        }
        let (action, updates, writes, next) = self.actions(row)?;
        ok.then_some(ir::Row {
            pos: ir::SourcePos { line, column },
            state,
            fields,
            conditions,
            action,
            updates,
            writes,
            next,
        })
    }

    fn actions(&mut self, row: &ast::Row) -> Option<RowActions> {
        let mut ok = true;
        let mut verdict: Option<(ir::Action, Span)> = None;
        let mut next: Option<(Option<StateId>, Span)> = None;
        let mut updates = Vec::new();
        let mut assigned: HashMap<RegTarget, Span> = HashMap::new();
        let mut writes = Vec::new();
        let mut written: HashMap<Field, Span> = HashMap::new();
        for a in &row.actions {
            match a {
                ast::ActionItem::Verdict(v, span) => {
                    if let Some((_, first)) = &verdict {
                        let first = first.clone();
                        self.err(
                            Diagnostic::error(
                                "second verdict in a row",
                                span.clone(),
                                "second verdict",
                            )
                            .with_note(first, "first verdict")
                            .with_help("a row has exactly one verdict"),
                        );
                        ok = false;
                        continue;
                    }
                    // An invalid verdict still counts as the row's verdict.
                    let action = self.verdict(v, true);
                    ok &= action.is_some();
                    verdict = Some((action.unwrap_or(ir::Action::Pass), span.clone()));
                }
                ast::ActionItem::Next(state, span) => {
                    if let Some((_, first)) = &next {
                        let first = first.clone();
                        self.err(
                            Diagnostic::error(
                                "second `next` in a row",
                                span.clone(),
                                "second `next`",
                            )
                            .with_note(first, "first `next`")
                            .with_help("a row moves to at most one state"),
                        );
                        ok = false;
                        continue;
                    }
                    let id = self.state(state);
                    ok &= id.is_some();
                    next = Some((id, span.clone()));
                }
                ast::ActionItem::Assign { target, value } if target.name.contains('.') => {
                    match self.field_write(target, value, &written) {
                        Some(w) => {
                            written.insert(w.field, target.span.clone());
                            writes.push(w);
                        }
                        None => ok = false,
                    }
                }
                ast::ActionItem::Assign { target, value } => {
                    let value = self.lower_expr(value, Ctx::Row);
                    let Some(t) = self.assign_target(target) else {
                        ok = false;
                        continue;
                    };
                    if let Some(first) = assigned.get(&t) {
                        let first = first.clone();
                        self.err(
                            Diagnostic::error(
                                format!("`{}` assigned twice in one row", target.name),
                                target.span.clone(),
                                "second assignment",
                            )
                            .with_note(first, "first assignment")
                            .with_help("updates run in parallel; combine them into one expression"),
                        );
                        ok = false;
                        continue;
                    }
                    assigned.insert(t, target.span.clone());
                    match value {
                        Some(value) => updates.push(ir::Update { target: t, value }),
                        None => ok = false,
                    }
                }
            }
        }
        if verdict.is_none() {
            self.err(
                Diagnostic::error(
                    "row has no verdict",
                    row.arrow.clone(),
                    "no verdict after this",
                )
                .with_help(
                    "add one of `pass`, `drop`, `tx`, `redirect IFNAME`, \
                         `controller [then pass|drop]`",
                ),
            );
            return None;
        }
        let (action, _) = verdict?;
        let next = match next {
            Some((id, _)) => Some(id?),
            None => None,
        };
        ok.then_some((action, updates, writes, next))
    }

    /// `FIELD = EXPR`: a writable field, assigned once, with a value that
    /// fits when it is a constant (other values are cut to the width).
    fn field_write(
        &mut self,
        target: &ast::Ident,
        value: &ast::Expr,
        written: &HashMap<Field, Span>,
    ) -> Option<ir::FieldWrite> {
        let lowered = self.lower_expr(value, Ctx::Row);
        let field = self.field(target)?;
        if !flowstate_wire::rewrite::writable(field) {
            let writable: Vec<&str> = Field::ALL
                .iter()
                .filter(|&&f| flowstate_wire::rewrite::writable(f))
                .map(|f| f.name())
                .collect();
            self.err(
                Diagnostic::error(
                    format!("cannot assign `{field}`"),
                    target.span.clone(),
                    "not a writable field",
                )
                .with_help(format!("fields a row may write: {}", writable.join(", "))),
            );
            return None;
        }
        if let Some(first) = written.get(&field) {
            self.err(
                Diagnostic::error(
                    format!("`{field}` assigned twice in one row"),
                    target.span.clone(),
                    "second assignment",
                )
                .with_note(first.clone(), "first assignment")
                .with_help("a row writes each field at most once"),
            );
            return None;
        }
        let lowered = lowered?;
        if let Expr::Const(c) = lowered {
            let fits = c >= 0 && (c as u128) <= width_mask(field);
            if !fits {
                self.err(
                    Diagnostic::error(
                        format!("value does not fit `{field}`"),
                        value.span.clone(),
                        format!("`{field}` is {} bits wide", field.bits()),
                    )
                    .with_help(format!("write a value from 0 to {}", width_mask(field))),
                );
                return None;
            }
        }
        Some(ir::FieldWrite {
            field,
            value: lowered,
        })
    }

    fn assign_target(&mut self, target: &ast::Ident) -> Option<RegTarget> {
        let n = &target.name;
        if let Some(r) = self.registers.get(n) {
            return Some(RegTarget::Flow(*r));
        }
        if let Some(g) = self.globals.get(n) {
            return Some(RegTarget::Global(*g));
        }
        let (message, help) = if self.consts.contains_key(n) {
            (
                format!("cannot assign to const `{n}`"),
                "declare it in `registers` or `globals` to change it".to_string(),
            )
        } else {
            let message = format!("unknown register `{n}`");
            let help = self.suggestion(&message, "not a register or global", || {
                let names = self
                    .register_names
                    .iter()
                    .chain(&self.global_names)
                    .map(String::as_str);
                suggest_help(n, names, "registers and globals")
            });
            (message, help)
        };
        self.err(
            Diagnostic::error(message, target.span.clone(), "not a register or global")
                .with_help(help),
        );
        None
    }

    fn item(&mut self, item: &ast::Item) -> Option<Lowered> {
        match &item.kind {
            ItemKind::Compare { lhs, op, rhs } => {
                let l = self.lower_expr(lhs, Ctx::Row);
                let r = self.lower_expr(rhs, Ctx::Row);
                Some(Lowered::Cond(ir::CondMatch {
                    cond: ir::Condition {
                        op: *op,
                        lhs: l?,
                        rhs: r?,
                    },
                    negated: item.negated,
                }))
            }
            ItemKind::Match { field, op, pattern } => {
                let f = self.field(field)?;
                self.field_match(f, field, *op, pattern, item)
            }
        }
    }

    fn field_match(
        &mut self,
        f: Field,
        field_id: &ast::Ident,
        op: MatchOp,
        pattern: &PatternAst,
        item: &ast::Item,
    ) -> Option<Lowered> {
        let as_field = |pattern| Some(Lowered::Field(ir::FieldMatch { field: f, pattern }));
        // `FIELD == EXPR` with a non-constant EXPR is a comparison; so is a
        // negated `==` or `has`, which no pattern can express.
        let non_const_eq = match pattern {
            PatternAst::Value(v) => op == MatchOp::Eq && !self.is_constant(v),
            _ => false,
        };
        if item.negated || non_const_eq {
            return self.match_as_condition(f, field_id, op, pattern, item);
        }
        match pattern {
            PatternAst::Present(_) => as_field(ir::Pattern::Masked { value: 0, mask: 0 }),
            PatternAst::Value(v) => {
                let value = self.pattern_value(f, v)?;
                match op {
                    MatchOp::Has => as_field(ir::Pattern::Masked { value, mask: value }),
                    MatchOp::Eq | MatchOp::In => as_field(ir::Pattern::Exact(value)),
                }
            }
            PatternAst::Range { lo, hi } => {
                let l = self.pattern_value(f, lo);
                let h = self.pattern_value(f, hi);
                let (l, h) = (l?, h?);
                if l > h {
                    self.err(
                        Diagnostic::error(
                            "empty range",
                            lo.span.start..hi.span.end,
                            "the low end is above the high end",
                        )
                        .with_help("write the range as `LOW..HIGH` (both ends included)"),
                    );
                    return None;
                }
                as_field(ir::Pattern::Range { lo: l, hi: h })
            }
            PatternAst::Set { values, .. } => {
                let mut set = Vec::new();
                let mut ok = true;
                for v in values {
                    match self.pattern_value(f, v) {
                        Some(x) => set.push(x),
                        None => ok = false,
                    }
                }
                set.sort_unstable();
                set.dedup();
                ok.then_some(())?;
                as_field(ir::Pattern::Set(set))
            }
            PatternAst::Slash { value, rhs } => {
                let v = self.pattern_value(f, value);
                let mask = if is_prefix_length(rhs) {
                    self.prefix_mask(f, rhs)
                } else {
                    self.pattern_value(f, rhs)
                };
                let (v, mask) = (v?, mask?);
                if v & !mask != 0 {
                    let fixed = flowstate_wire::format_value(f.format(), v & mask);
                    self.err(
                        Diagnostic::error(
                            "value has bits outside the mask",
                            value.span.start..rhs.span.end,
                            "this pattern can never match",
                        )
                        .with_help(format!(
                            "clear the bits the mask ignores: the value would be `{fixed}`"
                        )),
                    );
                    return None;
                }
                as_field(ir::Pattern::Masked { value: v, mask })
            }
        }
    }

    /// `FIELD == EXPR` / `!(FIELD == V)` / `!(FIELD has V)` as a condition.
    fn match_as_condition(
        &mut self,
        f: Field,
        field_id: &ast::Ident,
        op: MatchOp,
        pattern: &PatternAst,
        item: &ast::Item,
    ) -> Option<Lowered> {
        let PatternAst::Value(v) = pattern else {
            self.err(
                Diagnostic::error(
                    "a pattern cannot be negated",
                    item.span.clone(),
                    "negated pattern",
                )
                .with_help(
                    "only comparisons can be negated (`!(a < b)`, `not tcp.dport == 22`); \
                     list the values that should match instead",
                ),
            );
            return None;
        };
        if !f.fits_register() {
            self.err(wide_field(f, field_id.span.clone()));
            return None;
        }
        let rhs = self.lower_expr(v, Ctx::Row)?;
        let field = Expr::Field(f);
        let cond = match op {
            MatchOp::Has => {
                let masked = match rhs.clone() {
                    Expr::Const(m) => {
                        Expr::Binary(BinOp::And, Box::new(field), Box::new(Expr::Const(m)))
                    }
                    _ => {
                        self.err(
                            Diagnostic::error(
                                "pattern value must be a constant",
                                v.span.clone(),
                                "not a constant",
                            )
                            .with_help("`has` takes constant flags, e.g. `tcp.flags has syn|ack`"),
                        );
                        return None;
                    }
                };
                ir::Condition {
                    op: ir::CmpOp::Eq,
                    lhs: masked,
                    rhs,
                }
            }
            _ => ir::Condition {
                op: ir::CmpOp::Eq,
                lhs: field,
                rhs,
            },
        };
        Some(Lowered::Cond(ir::CondMatch {
            cond,
            negated: item.negated,
        }))
    }

    /// Whether a pattern value folds to a constant without reading the
    /// packet, the clock or a register (unknown names count as constant so
    /// that they are reported once, as unknown).
    fn is_constant(&self, e: &ast::Expr) -> bool {
        match &e.kind {
            ExprKind::Lit(..) => true,
            ExprKind::Now => false,
            ExprKind::Name(n) => {
                !(n.contains('.') || self.registers.contains_key(n) || self.globals.contains_key(n))
            }
            ExprKind::Neg(x) => self.is_constant(x),
            ExprKind::Binary(_, a, b) => self.is_constant(a) && self.is_constant(b),
        }
    }

    /// A constant pattern value that fits `f`. A single literal keeps all
    /// 128 bits (IPv6); anything else folds as a 64-bit expression.
    fn pattern_value(&mut self, f: Field, e: &ast::Expr) -> Option<u128> {
        let value = match &e.kind {
            ExprKind::Lit(_, v) => *v,
            _ => {
                let v = self.const_value(e)?;
                if v < 0 {
                    self.err(
                        Diagnostic::error(
                            "pattern value is negative",
                            e.span.clone(),
                            format!("this is {v}"),
                        )
                        .with_help(format!("values of `{f}` are unsigned")),
                    );
                    return None;
                }
                v as u128
            }
        };
        if value > width_mask(f) {
            let max = flowstate_wire::format_value(f.format(), width_mask(f));
            self.err(
                Diagnostic::error(
                    format!("value does not fit `{f}` ({} bits)", f.bits()),
                    e.span.clone(),
                    "too wide for the field",
                )
                .with_help(format!("values of `{f}` go up to {max}")),
            );
            return None;
        }
        Some(value)
    }

    fn prefix_mask(&mut self, f: Field, e: &ast::Expr) -> Option<u128> {
        let ExprKind::Lit(_, len) = e.kind else {
            return None;
        };
        let bits = f.bits();
        if len > u128::from(bits) {
            self.err(
                Diagnostic::error(
                    format!("prefix longer than `{f}` ({bits} bits)"),
                    e.span.clone(),
                    "prefix length too large",
                )
                .with_help(format!("a prefix of `{f}` has 0 to {bits} bits")),
            );
            return None;
        }
        let len = len as u32;
        let host_bits = bits - len;
        // `len` leading ones within the field's width.
        let ones = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        Some(ones & width_mask(f))
    }

    // ---- warnings ------------------------------------------------------

    fn absent_key_warnings(&mut self, singles: &Singles<'_>) {
        for (ids, _) in [&singles.flow, &singles.update].into_iter().flatten() {
            let absent: Vec<&ast::Ident> = ids
                .iter()
                .filter(|id| Field::from_name(&id.name).is_some_and(|f| f.layer() != Layer::Meta))
                .collect();
            let Some(first) = absent.first() else {
                continue;
            };
            let names: Vec<String> = absent.iter().map(|id| format!("`{}`", id.name)).collect();
            self.diags.push(
                Diagnostic::warning(
                    format!(
                        "key field{} {} may be absent: such packets get the default `pass` \
                         without state",
                        if names.len() > 1 { "s" } else { "" },
                        names.join(", ")
                    ),
                    first.span.clone(),
                    "not in every packet",
                )
                .with_help("declare `default VERDICT` to choose what they get"),
            );
        }
    }

    fn coverage_warning(&mut self, program: &ir::Program, table_kw: &Span) {
        if table::covers_all_packets(program) {
            return;
        }
        self.diags.push(
            Diagnostic::warning(
                "the table does not match every packet: the others get the default `pass`",
                table_kw.clone(),
                "some packets match no row",
            )
            .with_help("add a last row `* * => VERDICT`, or declare `default VERDICT`"),
        );
    }
}

/// What a row's actions give: the verdict, register updates, field
/// writes and next state.
type RowActions = (
    ir::Action,
    Vec<ir::Update>,
    Vec<ir::FieldWrite>,
    Option<StateId>,
);

enum Lowered {
    Field(ir::FieldMatch),
    Cond(ir::CondMatch),
}

/// All ones over the field's width.
pub(crate) fn width_mask(f: Field) -> u128 {
    u128::MAX >> (128 - f.bits().min(128))
}

fn not_constant(e: &ast::Expr, what: &str) -> Diagnostic {
    Diagnostic::error(
        format!("{what} is not a constant"),
        e.span.clone(),
        "must be known at compile time",
    )
    .with_help("this place takes literals, consts and TCP flag names only")
}

fn wide_field(f: Field, span: Span) -> Diagnostic {
    Diagnostic::error(
        format!(
            "`{f}` is {} bits wide: 128-bit fields are only for patterns and keys",
            f.bits()
        ),
        span,
        "cannot be used in an expression",
    )
    .with_help(format!(
        "match it with a pattern instead, e.g. `{f} == 2001:db8::1` or `{f} in 2001:db8::/32`"
    ))
}

#[cfg(test)]
mod tests {
    use crate::syntax::parser::NAMES_COMPARED;

    /// `n` declared states and `n` rows naming a state that does not exist.
    fn unknown_states(n: usize) -> String {
        let states: Vec<String> = (0..n).map(|i| format!("S{i}")).collect();
        let mut src = format!(
            "program p\nhook xdp\nflow ip.src\nstates {}\ndefault pass\ntable\n",
            states.join(", ")
        );
        for i in 0..n {
            src.push_str(&format!("  T{i} * => pass\n"));
        }
        src + "end\n"
    }

    fn names_compared(src: &str) -> usize {
        NAMES_COMPARED.with(|n| n.set(0));
        let _ = crate::compile(src);
        NAMES_COMPARED.with(|n| n.get())
    }

    /// "did you mean" compares a name with every declared one. It used to
    /// for every unknown name (20k x 20k: 54 s); now only for the errors
    /// that are shown, the others being folded into a count.
    #[test]
    fn suggestions_are_worked_out_only_for_shown_errors() {
        let small = names_compared(&unknown_states(5_000));
        let large = names_compared(&unknown_states(20_000));
        assert!(large <= 4 * small + 1000, "5k: {small}, 20k: {large}");
        assert!(large <= 20 * 20_000, "20k: {large}");
    }
}
