//! `flowstate check`: validate and summarise a program.

use std::path::Path;
use std::process::ExitCode;

use flowstate_lang::diag::{render, Diagnostic, LineIndex};
use flowstate_lang::ir::{FullPolicy, Program};
use flowstate_lang::print;
use serde_json::{json, Value};

use crate::load::{check_file, Checked};

pub fn run(path: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match check_file(path)? {
        Checked::Ok(loaded) => {
            let program = &loaded.compiled.program;
            let warnings = &loaded.compiled.warnings;
            // A valid program the kernel could not take is rejected here,
            // not at load time.
            if let Err(problems) = flowstate_codegen::check_limits(program) {
                if as_json {
                    let out = json!({
                        "ok": false,
                        "file": loaded.name,
                        "limits": problems,
                        "diagnostics": diagnostics_json(warnings, &loaded.name, &loaded.source),
                    });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    for p in problems {
                        eprintln!(
                            "error: {}: does not fit the kernel's limits: {p}",
                            loaded.name
                        );
                    }
                }
                return Ok(ExitCode::from(1));
            }
            if as_json {
                let mut summary = summary_json(program);
                summary["ok"] = json!(true);
                summary["file"] = json!(loaded.name);
                summary["diagnostics"] = diagnostics_json(warnings, &loaded.name, &loaded.source);
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                if !warnings.is_empty() {
                    eprint!("{}", render(warnings, &loaded.name, &loaded.source, color));
                }
                print!("{}", summary_text(program));
                // Folded repeats count too.
                let count: usize = warnings.iter().map(Diagnostic::count).sum();
                println!(
                    "{}: ok ({count} warning{})",
                    loaded.name,
                    if count == 1 { "" } else { "s" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Checked::Failed {
            source,
            name,
            diagnostics,
        } => {
            if as_json {
                let out = json!({
                    "ok": false,
                    "file": name,
                    "diagnostics": diagnostics_json(&diagnostics, &name, &source),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                eprint!("{}", render(&diagnostics, &name, &source, color));
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn diagnostics_json(diags: &[Diagnostic], file: &str, source: &str) -> Value {
    let lines = LineIndex::new(source);
    Value::Array(
        diags
            .iter()
            .map(|d| serde_json::to_value(d.to_json_at(file, &lines)).unwrap_or(Value::Null))
            .collect(),
    )
}

fn fields(list: &[flowstate_wire::Field]) -> String {
    list.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

fn timeout_text(program: &Program, state: &flowstate_lang::ir::State) -> Option<String> {
    let t = state.timeout?;
    let mut parts = Vec::new();
    if let Some(d) = t.idle_ns {
        parts.push(format!("idle {}", print::duration(d)));
    }
    if let Some(d) = t.hard_ns {
        parts.push(format!("hard {}", print::duration(d)));
    }
    parts.push(format!("rollback {}", program.state_name(t.rollback)));
    Some(parts.join(" "))
}

fn summary_text(program: &Program) -> String {
    let mut out = String::new();
    let key_bytes = Program::key_size(&program.lookup_key);
    out.push_str(&format!("program   {}\n", program.name));
    out.push_str(&format!("hook      {}\n", print::hook(program.hook)));
    out.push_str(&format!(
        "flow key  {} ({key_bytes} bytes)\n",
        fields(&program.lookup_key)
    ));
    if program.update_key != program.lookup_key {
        out.push_str(&format!(
            "update    {} ({} bytes)\n",
            fields(&program.update_key),
            Program::key_size(&program.update_key)
        ));
    }
    out.push_str(&format!(
        "table     {} flows, {} when full\n",
        program.capacity,
        match program.full_policy {
            FullPolicy::EvictLeastRecent => "evict the least recently seen",
            FullPolicy::RefuseNew => "refuse new flows",
        }
    ));
    out.push_str(&format!("states    {}\n", program.states.len()));
    for (i, s) in program.states.iter().enumerate() {
        let initial = if i == 0 { " (initial)" } else { "" };
        match timeout_text(program, s) {
            Some(t) => out.push_str(&format!("  {}{initial}: {t}\n", s.name)),
            None => out.push_str(&format!("  {}{initial}\n", s.name)),
        }
    }
    if !program.registers.is_empty() {
        out.push_str("registers\n");
        for r in &program.registers {
            out.push_str(&format!(
                "  {} = {}\n",
                r.name,
                print::expr(program, &r.init)
            ));
        }
    }
    if !program.globals.is_empty() {
        out.push_str("globals\n");
        for g in &program.globals {
            out.push_str(&format!("  {} = {}\n", g.name, g.init));
        }
    }
    out.push_str(&format!("rows      {}\n", program.rows.len()));
    out.push_str(&format!(
        "default   {}\n",
        print::action(&program.default_action)
    ));
    out
}

fn summary_json(program: &Program) -> Value {
    json!({
        "program": program.name,
        "hook": print::hook(program.hook),
        "flow": program.lookup_key.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "update": program.update_key.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "key_bytes": Program::key_size(&program.lookup_key),
        "capacity": program.capacity,
        "full_policy": match program.full_policy {
            FullPolicy::EvictLeastRecent => "evict",
            FullPolicy::RefuseNew => "refuse",
        },
        "states": program.states.iter().enumerate().map(|(i, s)| json!({
            "name": s.name,
            "initial": i == 0,
            "timeout": s.timeout.map(|t| json!({
                "idle_ns": t.idle_ns,
                "hard_ns": t.hard_ns,
                "rollback": program.state_name(t.rollback),
            })),
        })).collect::<Vec<_>>(),
        "registers": program.registers.iter().map(|r| json!({
            "name": r.name, "init": print::expr(program, &r.init)
        })).collect::<Vec<_>>(),
        "globals": program.globals.iter().map(|g| json!({"name": g.name, "init": g.init})).collect::<Vec<_>>(),
        "rows": program.rows.iter().map(|r| json!({
            "line": r.pos.line,
            "text": print::row(program, r),
        })).collect::<Vec<_>>(),
        "default": print::action(&program.default_action),
    })
}
