//! Host-side preparation of JavaScript and TypeScript cells, with the `oxc` crates.
//!
//! - TypeScript is type-stripped (enums and namespaces compiled) to JavaScript; a source map
//!   brings error positions back to the user's lines.
//! - Top-level `let`, `const` and `class` declarations become `var` bindings, so they persist
//!   as globals across cells and a re-run cell may declare them again (as in a notebook).
//! - `import x from 'fs'` becomes `var x = require('fs')`, and `export` is dropped.
//!
//! Keyword swaps keep their length (`const` becomes `var  `), so JavaScript cells keep their
//! line and column positions.

use std::path::Path;

use oxc::allocator::Allocator;
use oxc::ast::ast::{
    Class, Declaration, ImportDeclarationSpecifier, ModuleExportName, Program, Statement,
    VariableDeclarationKind,
};
use oxc::codegen::{Codegen, CodegenOptions};
use oxc::parser::Parser;
use oxc::semantic::SemanticBuilder;
use oxc::span::{GetSpan, SourceType};
use oxc::transformer::{TransformOptions, Transformer};

/// A cell ready to evaluate.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub code: String,
    /// For TypeScript: maps generated positions back to the user's.
    pub source_map: Option<oxc_sourcemap::SourceMap<'static>>,
}

/// A syntax error, positioned in the user's source (1-based line and column).
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub message: String,
    pub line: usize,
    pub column: usize,
    pub source_line: String,
}

impl SyntaxError {
    /// The text as the error's `traceback`: position, the line, a caret, the message.
    pub fn traceback(&self, filename: &str) -> String {
        let caret = " ".repeat(self.column.saturating_sub(1));
        format!(
            "{filename}:{}:{}\n{}\n{caret}^\n\nSyntaxError: {}\n",
            self.line, self.column, self.source_line, self.message
        )
    }
}

pub(crate) fn prepare(source: &str, typescript: bool) -> Result<Prepared, SyntaxError> {
    if !typescript {
        return Ok(Prepared {
            code: rewrite_top_level(source)?,
            source_map: None,
        });
    }
    let allocator = Allocator::default();
    let source_type = SourceType::ts().with_module(true);
    let parsed = Parser::new(&allocator, source, source_type).parse();
    if let Some(error) = parsed.diagnostics.iter().next() {
        return Err(syntax_error(source, error));
    }
    let mut program = parsed.program;
    let scoping = SemanticBuilder::new()
        .with_enum_eval(true)
        .build(&program)
        .semantic
        .into_scoping();
    let transformed = Transformer::new(
        &allocator,
        Path::new("cell.ts"),
        &TransformOptions::default(),
    )
    .build_with_scoping(scoping, &mut program);
    if let Some(error) = transformed.diagnostics.iter().next() {
        return Err(syntax_error(source, error));
    }
    let options = CodegenOptions {
        source_map_path: Some("cell.ts".into()),
        ..CodegenOptions::default()
    };
    let generated = Codegen::new()
        .with_options(options)
        .with_source_text(source)
        .build(&program);
    let code = rewrite_top_level(&generated.code).map_err(|mut e| {
        // Generated code that does not parse is a bug here, not the user's: say where it was.
        e.message = format!("{} (in the JavaScript compiled from TypeScript)", e.message);
        e
    })?;
    Ok(Prepared {
        code,
        source_map: generated.map.map(|m| m.into_owned()),
    })
}

fn syntax_error(source: &str, error: &oxc::diagnostics::OxcDiagnostic) -> SyntaxError {
    let offset = error
        .labels
        .first()
        .map_or(0, |l| l.offset() as usize)
        .min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    let source_line = source[line_start..]
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let message = error.message.to_string();
    SyntaxError {
        message,
        line,
        column,
        source_line,
    }
}

/// Applies the notebook rewrites to JavaScript source.
fn rewrite_top_level(source: &str) -> Result<String, SyntaxError> {
    let allocator = Allocator::default();
    let source_type = SourceType::mjs();
    let parsed = Parser::new(&allocator, source, source_type).parse();
    if let Some(error) = parsed.diagnostics.iter().next() {
        return Err(syntax_error(source, error));
    }
    let mut edits: Vec<(u32, u32, String)> = Vec::new();
    collect_edits(&parsed.program, source, &mut edits);
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(source.len() + 64);
    let mut at = 0usize;
    for (start, end, text) in edits {
        let (start, end) = (start as usize, end as usize);
        if start < at {
            continue; // overlapping edits cannot happen for top-level statements; be safe
        }
        out.push_str(&source[at..start]);
        out.push_str(&text);
        at = end;
    }
    out.push_str(&source[at..]);
    Ok(out)
}

fn collect_edits(program: &Program<'_>, source: &str, edits: &mut Vec<(u32, u32, String)>) {
    for statement in &program.body {
        match statement {
            Statement::VariableDeclaration(decl) => var_keyword(decl.kind, decl.span.start, edits),
            Statement::ClassDeclaration(class) => class_binding(class, edits),
            Statement::ImportDeclaration(import) => {
                let module = serde_json::to_string(import.source.value.as_str()).expect("a string");
                let mut text = String::new();
                for specifier in import.specifiers.iter().flatten() {
                    match specifier {
                        ImportDeclarationSpecifier::ImportDefaultSpecifier(s) => {
                            text.push_str(&format!("var {} = require({module}); ", s.local.name));
                        }
                        ImportDeclarationSpecifier::ImportNamespaceSpecifier(s) => {
                            text.push_str(&format!("var {} = require({module}); ", s.local.name));
                        }
                        ImportDeclarationSpecifier::ImportSpecifier(s) => {
                            let imported = match &s.imported {
                                ModuleExportName::IdentifierName(n) => n.name.to_string(),
                                ModuleExportName::IdentifierReference(n) => n.name.to_string(),
                                ModuleExportName::StringLiteral(n) => n.value.to_string(),
                            };
                            text.push_str(&format!(
                                "var {} = require({module})[{}]; ",
                                s.local.name,
                                serde_json::to_string(&imported).expect("a string")
                            ));
                        }
                    }
                }
                if text.is_empty() {
                    text = format!("require({module});");
                }
                // Keep the line count: the import may span lines.
                let span = import.span;
                let original = &source[span.start as usize..span.end as usize];
                text.push_str(&"\n".repeat(original.matches('\n').count()));
                edits.push((span.start, span.end, text));
            }
            Statement::ExportDeclaration(export) => {
                let start = export.declaration.span().start;
                edits.push((
                    export.span.start,
                    start,
                    " ".repeat((start - export.span.start) as usize),
                ));
                match &export.declaration {
                    Declaration::VariableDeclaration(var) => {
                        var_keyword(var.kind, var.span.start, edits)
                    }
                    Declaration::ClassDeclaration(class) => class_binding(class, edits),
                    _ => {}
                }
            }
            Statement::ExportNamedDeclaration(export) => {
                let span = export.span;
                edits.push((
                    span.start,
                    span.end,
                    " ".repeat((span.end - span.start) as usize),
                ));
            }
            Statement::ExportDefaultDeclaration(export) => {
                let start = export.declaration.span().start;
                edits.push((
                    export.span.start,
                    start,
                    " ".repeat((start - export.span.start) as usize),
                ));
            }
            _ => {}
        }
    }
}

/// `class C {}` becomes `var C = class C {};`.
fn class_binding(class: &Class<'_>, edits: &mut Vec<(u32, u32, String)>) {
    if let Some(id) = &class.id {
        edits.push((
            class.span.start,
            class.span.start,
            format!("var {} = ", id.name),
        ));
        edits.push((class.span.end, class.span.end, ";".into()));
    }
}

fn var_keyword(kind: VariableDeclarationKind, start: u32, edits: &mut Vec<(u32, u32, String)>) {
    let keyword = match kind {
        VariableDeclarationKind::Let => "let",
        VariableDeclarationKind::Const => "const",
        _ => return,
    };
    let replacement = format!("{:width$}", "var", width = keyword.len());
    edits.push((start, start + keyword.len() as u32, replacement));
}

/// Rewrites `<cell N>:line:col` positions in a stack trace through the source map.
pub(crate) fn map_positions(
    text: &str,
    filename: &str,
    map: &oxc_sourcemap::SourceMap<'static>,
) -> String {
    let table = map.generate_lookup_table();
    let needle = format!("{filename}:");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        out.push_str(&rest[..at + needle.len()]);
        rest = &rest[at + needle.len()..];
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let line_len = digits(rest);
        let (Ok(line), true) = (
            rest[..line_len].parse::<u32>(),
            rest[line_len..].starts_with(':'),
        ) else {
            continue;
        };
        let after = &rest[line_len + 1..];
        let col_len = digits(after);
        let Ok(column) = after[..col_len].parse::<u32>() else {
            continue;
        };
        match map.lookup_source_view_token(&table, line.saturating_sub(1), column.saturating_sub(1))
        {
            Some(token) => {
                let (src_line, src_col) = (token.get_src_line() + 1, token.get_src_col() + 1);
                out.push_str(&format!("{src_line}:{src_col}"));
            }
            None => out.push_str(&format!("{line}:{column}")),
        }
        rest = &after[col_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_declarations_become_vars_and_keep_positions() {
        let out = prepare("let a = 1;\nconst b = 2;\nclass C {}\nfor (const x of []) {}\nfunction f() { let y = 1; }", false).unwrap();
        assert_eq!(
            out.code,
            "var a = 1;\nvar   b = 2;\nvar C = class C {};\nfor (const x of []) {}\nfunction f() { let y = 1; }"
        );
    }

    #[test]
    fn imports_and_exports_become_plain_bindings() {
        let out = prepare("import fs from 'fs';\nimport { readFileSync as r } from 'node:fs';\nexport const z = 1;", false).unwrap();
        assert!(
            out.code.starts_with(
                "var fs = require(\"fs\"); \nvar r = require(\"node:fs\")[\"readFileSync\"]; \n"
            ),
            "{}",
            out.code
        );
        assert!(out.code.ends_with("var   z = 1;"), "{}", out.code);
    }

    #[test]
    fn typescript_is_stripped_and_enums_compiled() {
        let out = prepare("enum Color { Red, Green }\ninterface P { x: number }\nconst p: P = { x: Color.Green as number };\np.x", true).unwrap();
        assert!(!out.code.contains("interface"), "{}", out.code);
        assert!(out.code.contains("Color"), "{}", out.code);
        assert!(out.source_map.is_some());
    }

    #[test]
    fn syntax_errors_carry_the_users_line_and_column() {
        let e = prepare("let ok = 1;\nlet x: number = ;", true).unwrap_err();
        assert_eq!((e.line, e.column), (2, 17), "{e:?}");
        assert_eq!(e.source_line, "let x: number = ;");
        let e = prepare("1 +", false).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.traceback("<cell 1>").contains("SyntaxError: "));
    }
}
