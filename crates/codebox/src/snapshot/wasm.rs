//! What a snapshot build needs to know about a guest module, read from its code rather than
//! assumed: where the Python reactor keeps its per-turn flags, which internal functions reset
//! wasi-libc's state, and how to export an internal function. Anything that does not look as
//! expected is an error naming what differs, so a different runtime build fails loudly
//! instead of being patched at a wrong address.

use std::collections::HashMap;

use wasm_encoder::{ExportKind, ExportSection, RawSection};
use wasmparser::{
    CompositeInnerType, ExternalKind, KnownCustom, Name, Operator, Parser, Payload, TypeRef,
};

use crate::error::Error;

/// Internal functions the build calls right before the snapshot, in this order: forget the
/// preopen table (so a restored context reads its own), and zero the unused shadow stack.
pub(crate) const RESET_FUNCTIONS: [&str; 2] = ["__wasilibc_reset_preopens", "clear_unused_stack"];

/// The export that runs one turn of the reactor.
const TURN_EXPORT: &str = "turn";

/// Facts about a module, from one pass over it.
#[derive(Debug)]
pub(crate) struct ModuleFacts {
    /// Byte addresses the `turn` export sets with `i32.store8` at a constant address: the
    /// reactor's "turn was called", "first turn done" and "in a turn" flags.
    pub turn_flags: Vec<u32>,
    /// Function indices of [`RESET_FUNCTIONS`], each checked to take and return nothing.
    pub reset_functions: Vec<u32>,
}

fn unexpected(what: impl std::fmt::Display) -> Error {
    crate::error::Error::template_step(format!(
        "the Python runtime is not the build templates were verified with: {what}"
    ))
}

/// Reads the facts from the plain module.
pub(crate) fn inspect(wasm: &[u8]) -> Result<ModuleFacts, Error> {
    let bad = |e: wasmparser::BinaryReaderError| unexpected(format!("unreadable module: {e}"));
    let mut turn = None;
    let mut imported = 0u32;
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(bad)? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if let TypeRef::Func(_) = import.map_err(bad)?.ty {
                        imported += 1;
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(bad)?;
                    if export.name == TURN_EXPORT && export.kind == ExternalKind::Func {
                        turn = Some(export.index);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            _ => {}
        }
    }

    let turn = turn.ok_or_else(|| unexpected("it exports no `turn` function"))?;
    let body = turn
        .checked_sub(imported)
        .and_then(|i| bodies.get(i as usize))
        .ok_or_else(|| unexpected("`turn` is not a function defined in the module"))?;
    let mut turn_flags = Vec::new();
    let mut recent: [Option<i32>; 2] = [None, None]; // the last two constants pushed
    let mut ops = body.get_operators_reader().map_err(bad)?;
    while !ops.eof() {
        let op = ops.read().map_err(bad)?;
        if let Operator::I32Store8 { memarg } = &op
            && recent[0] == Some(0)
            && recent[1].is_some()
        {
            let address = u32::try_from(memarg.offset)
                .map_err(|_| unexpected("a flag address beyond 4 GiB"))?;
            if !turn_flags.contains(&address) {
                turn_flags.push(address);
            }
        }
        recent = match op {
            Operator::I32Const { value } => [recent[1], Some(value)],
            _ => [None, None],
        };
    }
    if turn_flags.len() < 2 {
        return Err(unexpected(format!(
            "`turn` sets {} byte flags at fixed addresses; at least 2 expected",
            turn_flags.len()
        )));
    }

    let reset_functions = plain_functions(wasm, &RESET_FUNCTIONS).map_err(unexpected)?;
    Ok(ModuleFacts {
        turn_flags,
        reset_functions,
    })
}

/// The indices of the internal functions `wanted`, found by the name section, in that order;
/// each must take and return nothing. The error says which is missing or different.
pub(crate) fn plain_functions(wasm: &[u8], wanted: &[&str]) -> Result<Vec<u32>, String> {
    let bad = |e: wasmparser::BinaryReaderError| format!("unreadable module: {e}");
    let mut func_types: Vec<u32> = Vec::new(); // type index of every function, imports first
    let mut empty_types = Vec::new(); // whether each type is `[] -> []`
    let mut names: HashMap<String, u32> = HashMap::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(bad)? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group.map_err(bad)?.into_types() {
                        empty_types.push(matches!(
                            &ty.composite_type.inner,
                            CompositeInnerType::Func(f) if f.params().is_empty() && f.results().is_empty()
                        ));
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if let TypeRef::Func(ty) = import.map_err(bad)?.ty {
                        func_types.push(ty);
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    func_types.push(ty.map_err(bad)?);
                }
            }
            Payload::CustomSection(section) => {
                if let KnownCustom::Name(reader) = section.as_known() {
                    for subsection in reader {
                        if let Ok(Name::Function(map)) = subsection {
                            for naming in map.into_iter().flatten() {
                                if wanted.contains(&naming.name) {
                                    names.insert(naming.name.to_string(), naming.index);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    wanted
        .iter()
        .map(|name| {
            let index = *names
                .get(*name)
                .ok_or_else(|| format!("its name section has no function {name}"))?;
            let takes_nothing = func_types
                .get(index as usize)
                .and_then(|&ty| empty_types.get(ty as usize))
                .copied()
                .unwrap_or(false);
            if !takes_nothing {
                return Err(format!(
                    "{name} is not a function without parameters or results"
                ));
            }
            Ok(index)
        })
        .collect()
}

/// `wasm` with the functions `functions` (index, export name) exported as well; every other
/// section is copied unchanged.
pub(crate) fn with_exports(wasm: &[u8], functions: &[(u32, &str)]) -> Result<Vec<u8>, String> {
    let bad = |e: wasmparser::BinaryReaderError| format!("unreadable module: {e}");
    let mut module = wasm_encoder::Module::new();
    let mut exported = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(bad)?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export.map_err(bad)?;
                let kind = match export.kind {
                    ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                    ExternalKind::Table => ExportKind::Table,
                    ExternalKind::Memory => ExportKind::Memory,
                    ExternalKind::Global => ExportKind::Global,
                    ExternalKind::Tag => ExportKind::Tag,
                };
                exports.export(export.name, kind, export.index);
            }
            for (index, name) in functions {
                exports.export(name, ExportKind::Func, *index);
            }
            module.section(&exports);
            exported = true;
        } else if let Some((id, range)) = payload.as_section() {
            module.section(&RawSection {
                id,
                data: &wasm[range],
            });
        }
    }
    if !exported {
        return Err("it has no export section".into());
    }
    Ok(module.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REACTOR: &str = r#"(module
        (memory (export "memory") 1)
        (func $__wasilibc_reset_preopens)
        (func $clear_unused_stack)
        (func (export "turn") (param i32 i32) (result i32)
            i32.const 0
            i32.const 1
            i32.store8 offset=100
            i32.const 0
            i32.const 1
            i32.store8 offset=104
            local.get 0
            i32.const 1
            i32.store8 offset=200
            i32.const 0))"#;

    #[test]
    fn finds_constant_flags_and_exports_internal_functions() {
        let wasm = wat::parse_str(REACTOR).unwrap();
        let facts = inspect(&wasm).unwrap();
        assert_eq!(
            facts.turn_flags,
            [100, 104],
            "the store through a local is no flag"
        );
        assert_eq!(facts.reset_functions, [0, 1]);

        let exports = [(0, "reset"), (1, "clear")];
        let patched = with_exports(&wasm, &exports).unwrap();
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &patched).unwrap();
        let names: Vec<_> = module.exports().map(|e| e.name().to_string()).collect();
        assert_eq!(names, ["memory", "turn", "reset", "clear"]);
    }

    #[test]
    fn a_different_module_is_refused_with_the_reason() {
        let wasm = wat::parse_str(r#"(module (func (export "turn")))"#).unwrap();
        let err = inspect(&wasm).unwrap_err().to_string();
        assert!(err.contains("byte flags"), "{err}");

        let no_names = REACTOR.replace("$__wasilibc_reset_preopens", "$other");
        let err = inspect(&wat::parse_str(no_names).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("__wasilibc_reset_preopens"), "{err}");
    }
}
