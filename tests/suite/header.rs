//! The committed header against the Rust declarations: `include/masked_rnn.h` is hand-written, so this
//! test parses it and the C ABI's Rust source (`src/capi/*.rs`) and fails, naming each difference, when
//! - a function is declared on one side only (Rust: a `#[no_mangle] pub [unsafe] extern "C" fn`, also one
//!   written by a `macro_rules!` macro, which is expanded here);
//! - a function's parameter count, a parameter's type (const-ness included) or name, or the return type
//!   differs;
//! - a `#[repr(C)]` struct and the header's `typedef struct { ... }` differ in their fields' names, types,
//!   array lengths or order, or one side has no such struct;
//! - an opaque type of the header is a `#[repr(C)]` struct in Rust, or a type of a Rust signature is not
//!   declared in the header;
//! - the header's enum constants (`MrnnStatus`) and the Rust `pub const MRNN_*` values differ.
//!
//! Rust types map to C ones as the header spells them: `i32` -> `int32_t`, `u8` -> `uint8_t`, `f32` ->
//! `float`, `c_char` -> `char`, `*const T` -> `const T *`, `*mut T` -> `T *`, `*mut *mut T` -> `T **`,
//! `*const *const T` -> `const T *const *`, no return type -> `void`, `[T; N]` (fields) -> `T name[N]`.
//! Types are compared in a canonical spelling: tokens separated by one space (`MrnnTape * *`).
//!
//! The parsers read exactly the subset of C and Rust these files use (no preprocessor beyond dropping
//! the `__cplusplus` guards and the directives, no function pointers, single-rule macros) and report
//! anything else they meet where a declaration should be, rather than skip it. No tool beyond the
//! standard library: the test runs wherever `cargo test` does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// A C type in its canonical spelling: tokens separated by one space, e.g. `const float *`.
type CType = String;

#[derive(Clone, Debug, PartialEq)]
struct Param {
    name: String,
    ty: CType,
}

#[derive(Clone, Debug)]
struct Function {
    ret: CType,
    params: Vec<Param>,
    /// Where it is declared (a file, and for Rust the macro that wrote it).
    origin: String,
}

#[derive(Clone, Debug, PartialEq)]
struct Field {
    name: String,
    ty: CType,
    /// The array length, for an array field.
    len: Option<u64>,
}

/// The declarations of one side.
#[derive(Debug, Default)]
struct Api {
    functions: BTreeMap<String, Function>,
    structs: BTreeMap<String, Vec<Field>>,
    /// Opaque types: C `typedef struct X X;`, Rust non-`repr(C)` `pub struct X`.
    opaque: BTreeSet<String>,
    /// C enum constants, Rust `pub const MRNN_*`.
    constants: BTreeMap<String, i64>,
}

impl Api {
    fn add_function(&mut self, name: String, f: Function) -> Result<(), String> {
        match self.functions.insert(name.clone(), f) {
            Some(old) => Err(format!("{name}: declared twice ({})", old.origin)),
            None => Ok(()),
        }
    }
}

// ------------------------------------------------------------------ tokens

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// An identifier or keyword; in Rust also a macro variable (`$name`).
    Ident(String),
    /// A literal: a number, or a string with its quotes (`"C"`), or a Rust char or lifetime.
    Lit(String),
    Punct(char),
}

fn ident(t: &Tok) -> Option<&str> {
    match t {
        Tok::Ident(s) => Some(s),
        _ => None,
    }
}

fn is(t: Option<&Tok>, c: char) -> bool {
    t == Some(&Tok::Punct(c))
}

fn is_word(t: Option<&Tok>, w: &str) -> bool {
    matches!(t, Some(Tok::Ident(s)) if s == w)
}

/// Tokens of C (`rust` false) or Rust source, comments dropped.
fn tokens(src: &str, rust: bool) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut out) = (0, Vec::new());
    let word = |i: &mut usize| {
        let start = *i;
        while *i < c.len() && (c[*i].is_alphanumeric() || c[*i] == '_') {
            *i += 1;
        }
        c[start..*i].iter().collect::<String>()
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            // Rust block comments nest; C ones do not (and the header nests none).
            let mut depth = 0;
            loop {
                if i + 1 >= c.len() {
                    return Err("unterminated block comment".into());
                }
                if c[i] == '/' && c[i + 1] == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c[i + 1] == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 || !rust {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if rust && matches!(ch, 'r' | 'b' | 'c') && raw_string_start(&c, i).is_some() {
            let (body_start, hashes) = raw_string_start(&c, i).unwrap_or_default();
            let closing: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let rest: String = c[body_start..].iter().collect();
            let end = rest.find(&closing).ok_or("unterminated raw string")?;
            out.push(Tok::Lit(format!("\"{}\"", &rest[..end])));
            i = body_start + rest[..end].chars().count() + closing.chars().count();
        } else if ch == '"' {
            let start = i;
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Tok::Lit(c[start..i.min(c.len())].iter().collect()));
        } else if ch == '\'' && rust {
            // A char literal ('x', '\n') or a lifetime ('a).
            if next == Some('\\') || c.get(i + 2) == Some(&'\'') {
                let start = i;
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push(Tok::Lit(c[start..i.min(c.len())].iter().collect()));
            } else {
                i += 1;
                out.push(Tok::Lit(format!("'{}", word(&mut i))));
            }
        } else if ch == '$' && rust && next.is_some_and(|n| n.is_alphabetic() || n == '_') {
            i += 1;
            out.push(Tok::Ident(format!("${}", word(&mut i))));
        } else if ch.is_ascii_digit() {
            out.push(Tok::Lit(word(&mut i)));
        } else if ch.is_alphabetic() || ch == '_' {
            out.push(Tok::Ident(word(&mut i)));
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    Ok(out)
}

/// Where the body of a Rust raw string (`r"..."`, `r#"..."#`, `br`, `cr`) starting at `i` begins, and
/// its number of `#`s.
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let mut j = i + usize::from(c[i] != 'r');
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&h| h == '#').count();
    (c.get(j + hashes) == Some(&'"')).then_some((j + hashes + 1, hashes))
}

/// The index just past the bracket that closes the one at `open`.
fn closing(t: &[Tok], open: usize) -> Result<usize, String> {
    let mut depth = 0_i32;
    for (k, tok) in t.iter().enumerate().skip(open) {
        match tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return Ok(k + 1);
                }
            }
            _ => {}
        }
    }
    Err(format!("unbalanced brackets after token {open}"))
}

/// `t` split at the commas outside brackets (and outside `<...>`), empty pieces dropped.
fn split_commas(t: &[Tok]) -> Vec<&[Tok]> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0_i32, 0);
    for (k, tok) in t.iter().enumerate() {
        match tok {
            Tok::Punct('(' | '[' | '{' | '<') => depth += 1,
            Tok::Punct(')' | ']' | '}' | '>') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                out.push(&t[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    out.push(&t[start..]);
    out.into_iter().filter(|p| !p.is_empty()).collect()
}

fn spelled(t: &[Tok]) -> String {
    t.iter()
        .map(|t| match t {
            Tok::Ident(s) | Tok::Lit(s) => s.clone(),
            Tok::Punct(c) => c.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------ C

/// C source without its comments (a comment's line breaks are kept, so that a comment that starts on a
/// directive's line and ends on a later one leaves nothing behind on the later lines).
fn without_c_comments(src: &str) -> String {
    let (mut out, mut rest) = (String::new(), src);
    while let Some(k) = rest.find(['/', '"']) {
        out.push_str(&rest[..k]);
        rest = &rest[k..];
        if rest.starts_with("/*") {
            let end = rest[2..].find("*/").map_or(rest.len(), |e| e + 4);
            out.extend(rest[..end].chars().filter(|&c| c == '\n'));
            out.push(' ');
            rest = &rest[end..];
        } else if rest.starts_with("//") {
            rest = &rest[rest.find('\n').unwrap_or(rest.len())..];
        } else if rest.starts_with('"') {
            let end = rest[1..].find('"').map_or(rest.len(), |e| e + 2);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        } else {
            out.push('/');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The header's text, comments dropped, without the `#ifdef __cplusplus` blocks and the other
/// preprocessor lines (the header continues no directive over several lines).
fn without_preprocessor(src: &str) -> String {
    let (mut out, mut skipping) = (String::new(), 0_usize);
    for line in without_c_comments(src).lines() {
        let directive = line.trim_start().strip_prefix('#').map(str::trim_start);
        match directive {
            Some(d) if skipping > 0 && d.starts_with("if") => skipping += 1,
            Some(d) if skipping > 0 && d.starts_with("endif") => skipping -= 1,
            Some(d) if d.starts_with("ifdef") && d.contains("__cplusplus") => skipping = 1,
            Some(_) => {}
            None if skipping == 0 => {
                out.push_str(line);
                out.push('\n');
            }
            None => {}
        }
    }
    out
}

/// A C declaration's type tokens and name: `const float *x` -> (`const float *`, `x`).
fn c_declarator(t: &[Tok]) -> Result<(CType, String), String> {
    match t.split_last() {
        Some((Tok::Ident(name), ty)) if !ty.is_empty() => Ok((spelled(ty), name.clone())),
        _ => Err(format!("not a declaration: `{}`", spelled(t))),
    }
}

fn c_api(src: &str) -> Result<Api, String> {
    let t = tokens(&without_preprocessor(src), false)?;
    let mut api = Api::default();
    let mut start = 0;
    while start < t.len() {
        // A statement: to the `;` outside braces.
        let mut end = start;
        while end < t.len() && !is(t.get(end), ';') {
            end = if is(t.get(end), '{') { closing(&t, end)? } else { end + 1 };
        }
        let s = &t[start..end];
        start = end + 1;
        let text = spelled(s);
        let Some(open) = s.iter().position(|x| matches!(x, Tok::Punct('{' | '('))) else {
            // Only `typedef struct X X;` has no bracket.
            match s {
                [Tok::Ident(td), Tok::Ident(st), Tok::Ident(a), Tok::Ident(b)] if td == "typedef" && st == "struct" => {
                    if a != b {
                        return Err(format!("`{text}`: an opaque typedef names two types"));
                    }
                    api.opaque.insert(a.clone());
                    continue;
                }
                _ => return Err(format!("unexpected statement in the header: `{text}`")),
            }
        };
        let close = closing(s, open)?;
        if is_word(s.first(), "typedef") {
            let name = match &s[close..] {
                [Tok::Ident(n)] => n.clone(),
                _ => return Err(format!("`{text}`: expected one name after the braces")),
            };
            let body = &s[open + 1..close - 1];
            if is_word(s.get(1), "struct") {
                api.structs.insert(name, c_fields(body)?);
            } else if is_word(s.get(1), "enum") {
                for e in split_commas(body) {
                    match e {
                        [Tok::Ident(n), Tok::Punct('='), v @ ..] => {
                            let v = spelled(v).replace(' ', "");
                            let v = v.parse().map_err(|_| format!("{n}: value `{v}` is not an integer"))?;
                            api.constants.insert(n.clone(), v);
                        }
                        _ => return Err(format!("enum {name}: an enumerator without a value: `{}`", spelled(e))),
                    }
                }
            } else {
                return Err(format!("unexpected typedef: `{text}`"));
            }
            continue;
        }
        // A prototype: return type, name, (parameters).
        if !is(s.get(open), '(') || close != s.len() {
            return Err(format!("not a prototype: `{text}`"));
        }
        let (ret, name) = c_declarator(&s[..open])?;
        let inner = &s[open + 1..close - 1];
        let params = if matches!(inner, [Tok::Ident(v)] if v == "void") {
            Vec::new()
        } else {
            let mut ps = Vec::new();
            for p in split_commas(inner) {
                let (ty, name) = c_declarator(p).map_err(|e| format!("{text}: {e}"))?;
                ps.push(Param { name, ty });
            }
            ps
        };
        api.add_function(name, Function { ret, params, origin: "include/masked_rnn.h".into() })?;
    }
    Ok(api)
}

/// The fields of a C struct body: `int64_t a, b; int32_t c[6];`.
fn c_fields(body: &[Tok]) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    for decl in body.split(|x| is(Some(x), ';')).filter(|d| !d.is_empty()) {
        let parts = split_commas(decl);
        let first = parts[0];
        // The type is what precedes the first declarator's name.
        let name_at = first
            .iter()
            .rposition(|x| matches!(x, Tok::Ident(_)))
            .filter(|&k| k > 0)
            .ok_or_else(|| format!("not a field: `{}`", spelled(decl)))?;
        let name_at = if is(first.get(name_at + 1), '[') || name_at + 1 == first.len() {
            name_at
        } else {
            // `int32_t a[6]`: the last identifier may be inside the brackets only if it is a size.
            first.iter().position(|x| is(Some(x), '[')).ok_or(format!("not a field: `{}`", spelled(decl)))? - 1
        };
        let ty = spelled(&first[..name_at]);
        for (k, part) in parts.iter().enumerate() {
            let d = if k == 0 { &first[name_at..] } else { part };
            let field = match d {
                [Tok::Ident(n)] => Field { name: n.clone(), ty: ty.clone(), len: None },
                [Tok::Ident(n), Tok::Punct('['), Tok::Lit(len), Tok::Punct(']')] => Field {
                    name: n.clone(),
                    ty: ty.clone(),
                    len: Some(len.parse().map_err(|_| format!("{n}: array length `{len}`"))?),
                },
                _ => return Err(format!("unsupported declarator `{}` in `{}`", spelled(d), spelled(decl))),
            };
            fields.push(field);
        }
    }
    Ok(fields)
}

// ------------------------------------------------------------------ Rust

/// The C spelling of a Rust type of the C ABI.
fn c_type(t: &[Tok]) -> Result<CType, String> {
    match t {
        [Tok::Punct('*'), Tok::Ident(q), rest @ ..] if q == "const" || q == "mut" => {
            let inner = c_type(rest)?;
            let inner = match (q.as_str(), inner.ends_with('*')) {
                ("mut", _) => inner,
                (_, true) => format!("{inner} const"),
                (_, false) => format!("const {inner}"),
            };
            Ok(format!("{inner} *"))
        }
        [Tok::Punct('('), Tok::Punct(')')] => Ok("void".into()),
        _ => {
            // A path: `a::b::T`; its last segment is the type.
            let last = match t.last() {
                Some(Tok::Ident(s)) => s.as_str(),
                _ => return Err(format!("unsupported type `{}`", spelled(t))),
            };
            let path_ok = t.iter().enumerate().all(|(k, x)| match x {
                Tok::Ident(_) => t.len() == 1 || k % 3 == 0,
                Tok::Punct(':') => k % 3 != 0,
                _ => false,
            });
            let c = match last {
                "i8" => "int8_t",
                "i16" => "int16_t",
                "i32" => "int32_t",
                "i64" => "int64_t",
                "u8" => "uint8_t",
                "u16" => "uint16_t",
                "u32" => "uint32_t",
                "u64" => "uint64_t",
                "usize" => "size_t",
                "isize" => "ptrdiff_t",
                "f32" => "float",
                "f64" => "double",
                "c_char" => "char",
                "bool" => "bool",
                "c_void" => "void",
                s if s.starts_with("Mrnn") => s,
                _ => return Err(format!("type `{}` has no C spelling here", spelled(t))),
            };
            if !path_ok {
                return Err(format!("unsupported type `{}`", spelled(t)));
            }
            Ok(c.into())
        }
    }
}

/// The index past the attributes (`#[...]`) starting at `i`.
fn skip_attributes(t: &[Tok], mut i: usize) -> Result<usize, String> {
    while is(t.get(i), '#') && is(t.get(i + 1), '[') {
        i = closing(t, i + 1)?;
    }
    Ok(i)
}

/// A single-rule `macro_rules!` macro: its parameters and body.
struct Macro {
    params: Vec<String>,
    body: Vec<Tok>,
}

/// Every `macro_rules!` macro of `t` whose body declares an `extern` function (the others are of no
/// concern here). Such a macro must have one rule whose matcher has only `$name:fragment` parameters.
fn extern_macros(t: &[Tok]) -> Result<BTreeMap<String, Macro>, String> {
    let mut macros = BTreeMap::new();
    for i in 0..t.len() {
        if !(is_word(t.get(i), "macro_rules") && is(t.get(i + 1), '!') && is(t.get(i + 3), '{')) {
            continue;
        }
        let name = ident(&t[i + 2]).ok_or("macro_rules! without a name")?.to_string();
        let end = closing(t, i + 3)?;
        let rules = &t[i + 4..end - 1];
        if !rules.iter().any(|x| is_word(Some(x), "extern")) {
            continue;
        }
        let bad =
            |why: &str| format!("macro {name}! declares an extern function but {why}: the checker cannot expand it");
        if !is(rules.first(), '(') {
            return Err(bad("its rule does not start with a (matcher)"));
        }
        let matcher_end = closing(rules, 0)?;
        let matcher = &rules[1..matcher_end - 1];
        if !(is(rules.get(matcher_end), '=')
            && is(rules.get(matcher_end + 1), '>')
            && is(rules.get(matcher_end + 2), '{'))
        {
            return Err(bad("its rule has no => { body }"));
        }
        let body_end = closing(rules, matcher_end + 2)?;
        let rest = &rules[body_end..];
        if !(rest.is_empty() || matches!(rest, [Tok::Punct(';')])) {
            return Err(bad("it has several rules"));
        }
        let mut params = Vec::new();
        for p in split_commas(matcher) {
            match p {
                [Tok::Ident(v), Tok::Punct(':'), Tok::Ident(_)] if v.starts_with('$') => params.push(v.clone()),
                _ => return Err(bad(&format!("its matcher has `{}`", spelled(p)))),
            }
        }
        macros.insert(name, Macro { params, body: rules[matcher_end + 3..body_end - 1].to_vec() });
    }
    Ok(macros)
}

/// The expansions of every invocation (`name!(args);`) of `macros` in `t`, with the macro's name.
fn expansions(t: &[Tok], macros: &BTreeMap<String, Macro>) -> Result<Vec<(String, Vec<Tok>)>, String> {
    let mut out = Vec::new();
    for i in 0..t.len() {
        let Some(m) = ident(&t[i]).and_then(|n| macros.get(n)) else { continue };
        if !(is(t.get(i + 1), '!') && is(t.get(i + 2), '(')) {
            continue;
        }
        let name = ident(&t[i]).unwrap_or_default().to_string();
        let end = closing(t, i + 2)?;
        let args = split_commas(&t[i + 3..end - 1]);
        if args.len() != m.params.len() {
            return Err(format!("{name}!: {} arguments for {} parameters", args.len(), m.params.len()));
        }
        let mut body = Vec::new();
        for tok in &m.body {
            match m.params.iter().position(|p| Some(p.as_str()) == ident(tok)) {
                Some(k) => body.extend_from_slice(args[k]),
                None => body.push(tok.clone()),
            }
        }
        out.push((name, body));
    }
    Ok(out)
}

/// The declarations of a Rust token stream `t` (from `origin`) into `api`.
fn rust_items(t: &[Tok], origin: &str, api: &mut Api) -> Result<(), String> {
    let mut i = 0;
    while i < t.len() {
        // Macro definitions declare nothing until expanded (`expansions`).
        if is_word(t.get(i), "macro_rules") && is(t.get(i + 1), '!') && is(t.get(i + 3), '{') {
            i = closing(t, i + 3)?;
            continue;
        }
        if !(is(t.get(i), '#') && is(t.get(i + 1), '[')) {
            // `pub const MRNN_X: i32 = N;`
            if is_word(t.get(i), "pub")
                && is_word(t.get(i + 1), "const")
                && ident(t.get(i + 2).unwrap_or(&Tok::Punct(' '))).is_some_and(|n| n.starts_with("MRNN_"))
            {
                let name = ident(&t[i + 2]).unwrap_or_default().to_string();
                let semi = (i..t.len()).find(|&k| is(t.get(k), ';')).ok_or("pub const without ;")?;
                let eq = (i..semi).find(|&k| is(t.get(k), '=')).ok_or(format!("{name}: no value"))?;
                let v = spelled(&t[eq + 1..semi]).replace(' ', "");
                api.constants.insert(name.clone(), v.parse().map_err(|_| format!("{name}: value `{v}`"))?);
                i = semi;
            }
            i += 1;
            continue;
        }
        // A run of attributes, then the item they are on.
        let after = skip_attributes(t, i)?;
        let (mut exported, mut repr_c, mut k) = (false, false, i);
        while k < after {
            let end = closing(t, k + 1)?;
            let attr = &t[k..end];
            exported |= attr.iter().any(|x| is_word(Some(x), "no_mangle"));
            repr_c |= matches!(attr, [_, _, Tok::Ident(r), Tok::Punct('('), Tok::Ident(c), Tok::Punct(')'), _]
                if r == "repr" && c == "C");
            k = end;
        }
        if exported {
            i = rust_function(t, after, origin, api)?;
        } else if repr_c {
            i = rust_struct(t, after, api)?;
        } else {
            i = after;
        }
    }
    // Non-repr(C) public structs named like the C ABI's types are its opaque types.
    for k in 0..t.len() {
        if is_word(t.get(k), "pub") && is_word(t.get(k + 1), "struct") {
            if let Some(n) = t.get(k + 2).and_then(ident).filter(|n| n.starts_with("Mrnn")) {
                if !api.structs.contains_key(n) {
                    api.opaque.insert(n.to_string());
                }
            }
        }
    }
    Ok(())
}

/// `pub [unsafe] extern "C" fn name(params) [-> ret] {` at `i`, after `#[no_mangle]`; returns the index
/// past the signature.
fn rust_function(t: &[Tok], mut i: usize, origin: &str, api: &mut Api) -> Result<usize, String> {
    let at = spelled(&t[i..(i + 8).min(t.len())]);
    if !is_word(t.get(i), "pub") {
        return Err(format!("{origin}: #[no_mangle] item is not `pub ... extern \"C\" fn`: `{at}`"));
    }
    i += 1;
    if is_word(t.get(i), "unsafe") {
        i += 1;
    }
    if !(is_word(t.get(i), "extern") && t.get(i + 1) == Some(&Tok::Lit("\"C\"".into())) && is_word(t.get(i + 2), "fn"))
    {
        return Err(format!("{origin}: #[no_mangle] item is not `pub ... extern \"C\" fn`: `{at}`"));
    }
    let name = t.get(i + 3).and_then(ident).ok_or(format!("{origin}: extern fn without a name"))?.to_string();
    if name.starts_with('$') {
        return Err(format!("{origin}: {name} is a macro variable the checker did not expand"));
    }
    if !is(t.get(i + 4), '(') {
        return Err(format!("{origin}: {name}: no parameter list"));
    }
    let close = closing(t, i + 4)?;
    let mut params = Vec::new();
    for p in split_commas(&t[i + 5..close - 1]) {
        match p {
            [Tok::Ident(n), Tok::Punct(':'), ty @ ..] => {
                let ty = c_type(ty).map_err(|e| format!("{origin}: {name}: parameter {n}: {e}"))?;
                params.push(Param { name: n.clone(), ty });
            }
            _ => return Err(format!("{origin}: {name}: parameter `{}`", spelled(p))),
        }
    }
    let body = (close..t.len()).find(|&k| is(t.get(k), '{')).ok_or(format!("{origin}: {name}: no body"))?;
    let ret = match &t[close..body] {
        [] => "void".to_string(),
        [Tok::Punct('-'), Tok::Punct('>'), ty @ ..] => c_type(ty).map_err(|e| format!("{origin}: {name}: {e}"))?,
        other => return Err(format!("{origin}: {name}: unexpected `{}` before the body", spelled(other))),
    };
    api.add_function(name, Function { ret, params, origin: origin.to_string() })?;
    Ok(body)
}

/// `pub struct Name { fields }` at `i`, after `#[repr(C)]`; returns the index past it.
fn rust_struct(t: &[Tok], i: usize, api: &mut Api) -> Result<usize, String> {
    let (Some(true), Some(true), Some(name)) = (
        t.get(i).map(|x| is_word(Some(x), "pub")),
        t.get(i + 1).map(|x| is_word(Some(x), "struct")),
        t.get(i + 2).and_then(ident),
    ) else {
        return Err(format!(
            "#[repr(C)] on something other than `pub struct`: `{}`",
            spelled(&t[i..(i + 4).min(t.len())])
        ));
    };
    if !is(t.get(i + 3), '{') {
        return Err(format!("{name}: #[repr(C)] struct without named fields"));
    }
    let end = closing(t, i + 3)?;
    let mut fields = Vec::new();
    for f in split_commas(&t[i + 4..end - 1]) {
        let mut k = skip_attributes(f, 0)?;
        if is_word(f.get(k), "pub") {
            k += 1;
            if is(f.get(k), '(') {
                k = closing(f, k)?;
            }
        }
        let field = match &f[k..] {
            [Tok::Ident(n), Tok::Punct(':'), Tok::Punct('['), inner @ .., Tok::Punct(']')] => {
                let semi = inner.iter().position(|x| is(Some(x), ';')).ok_or(format!("{name}.{n}: array"))?;
                let len = match &inner[semi + 1..] {
                    [Tok::Lit(l)] => l.parse().map_err(|_| format!("{name}.{n}: array length `{l}`"))?,
                    other => return Err(format!("{name}.{n}: array length `{}`", spelled(other))),
                };
                Field { name: n.clone(), ty: c_type(&inner[..semi])?, len: Some(len) }
            }
            [Tok::Ident(n), Tok::Punct(':'), ty @ ..] => {
                Field { name: n.clone(), ty: c_type(ty).map_err(|e| format!("{name}.{n}: {e}"))?, len: None }
            }
            other => return Err(format!("{name}: field `{}`", spelled(other))),
        };
        fields.push(field);
    }
    api.structs.insert(name.to_string(), fields);
    Ok(end)
}

/// The declarations of Rust sources (`(origin, text)` pairs), macros expanded.
fn rust_api(files: &[(String, String)]) -> Result<Api, String> {
    let mut api = Api::default();
    for (origin, src) in files {
        let t = tokens(src, true).map_err(|e| format!("{origin}: {e}"))?;
        rust_items(&t, origin, &mut api)?;
        for (name, body) in expansions(&t, &extern_macros(&t).map_err(|e| format!("{origin}: {e}"))?)? {
            rust_items(&body, &format!("{origin}, {name}!"), &mut api)?;
        }
    }
    // The other types of the signatures exist (the crate compiles): they are opaque, some written by
    // macros the checker does not expand.
    let used: Vec<String> = api
        .functions
        .values()
        .flat_map(|f| std::iter::once(&f.ret).chain(f.params.iter().map(|p| &p.ty)))
        .map(|ty| base_type(ty))
        .filter(|b| b.starts_with("Mrnn") && !api.structs.contains_key(b))
        .collect();
    api.opaque.extend(used);
    Ok(api)
}

// ------------------------------------------------------------------ comparison

fn field_text(f: &Field) -> String {
    match f.len {
        Some(n) => format!("`{} {}[{n}]`", f.ty, f.name),
        None => format!("`{} {}`", f.ty, f.name),
    }
}

/// The type a C type points to, const and pointers dropped: `const MrnnTape * *` -> `MrnnTape`.
fn base_type(ty: &str) -> String {
    ty.split(' ').filter(|&w| w != "const" && w != "*").collect::<Vec<_>>().join(" ")
}

fn without_const(ty: &str) -> String {
    ty.split(' ').filter(|&w| w != "const").collect::<Vec<_>>().join(" ")
}

/// `header` and `rust` differ in `what`: the message, with "const-ness differs" when only that does.
fn type_difference(what: &str, header: &str, rust: &str) -> String {
    let why = if without_const(header) == without_const(rust) { " (const-ness differs)" } else { "" };
    format!("{what}: `{header}` in the header, `{rust}` in Rust{why}")
}

/// Every difference between the header's declarations and the Rust ones, one message each.
fn differences(c: &Api, rust: &Api) -> Vec<String> {
    let mut out = Vec::new();
    for (name, f) in &c.functions {
        let Some(r) = rust.functions.get(name) else {
            out.push(format!("{name}: declared in the header, not exported by the Rust source"));
            continue;
        };
        let origin = &r.origin;
        if f.ret != r.ret {
            out.push(type_difference(&format!("{name} ({origin}): return type"), &f.ret, &r.ret));
        }
        if f.params.len() != r.params.len() {
            out.push(format!(
                "{name} ({origin}): {} parameters in the header, {} in Rust",
                f.params.len(),
                r.params.len()
            ));
            continue;
        }
        for (k, (p, q)) in f.params.iter().zip(&r.params).enumerate() {
            if p.name != q.name {
                out.push(format!(
                    "{name} ({origin}): parameter {k} is `{}` in the header, `{}` in Rust",
                    p.name, q.name
                ));
            }
            if p.ty != q.ty {
                out.push(type_difference(&format!("{name} ({origin}): parameter {k} `{}`", p.name), &p.ty, &q.ty));
            }
        }
    }
    for (name, r) in &rust.functions {
        if !c.functions.contains_key(name) {
            out.push(format!("{name}: exported by {}, not declared in the header", r.origin));
        }
    }
    for (name, fields) in &c.structs {
        let Some(r) = rust.structs.get(name) else {
            out.push(format!("{name}: a struct of the header, no #[repr(C)] struct in the Rust source"));
            continue;
        };
        for k in 0..fields.len().max(r.len()) {
            match (fields.get(k), r.get(k)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => {
                    out.push(format!("{name}: field {k} is {} in the header, {} in Rust", field_text(a), field_text(b)))
                }
                (Some(a), None) => out.push(format!("{name}: field {k} {} is in the header only", field_text(a))),
                (None, Some(b)) => out.push(format!("{name}: field {k} {} is in Rust only", field_text(b))),
                (None, None) => {}
            }
        }
    }
    for name in rust.structs.keys() {
        if !c.structs.contains_key(name) {
            let what = if c.opaque.contains(name) { "opaque in the header" } else { "not in the header" };
            out.push(format!("{name}: a #[repr(C)] struct in Rust, {what}"));
        }
    }
    // Every type of a Rust signature is declared in the header.
    let declared = |ty: &str| {
        let base = base_type(ty);
        !base.starts_with("Mrnn") || c.structs.contains_key(&base) || c.opaque.contains(&base)
    };
    for (name, f) in &rust.functions {
        for ty in std::iter::once(&f.ret).chain(f.params.iter().map(|p| &p.ty)) {
            if !declared(ty) {
                out.push(format!("{name} ({}): type `{ty}` is not declared in the header", f.origin));
            }
        }
    }
    for name in &c.opaque {
        if !rust.opaque.contains(name) && !rust.structs.contains_key(name) {
            out.push(format!("{name}: an opaque type of the header, not a type of the Rust source"));
        }
    }
    for (name, v) in &c.constants {
        match rust.constants.get(name) {
            Some(r) if r == v => {}
            Some(r) => out.push(format!("{name}: = {v} in the header, = {r} in Rust")),
            None => out.push(format!("{name}: an enum constant of the header, no `pub const {name}` in Rust")),
        }
    }
    for name in rust.constants.keys() {
        if !c.constants.contains_key(name) {
            out.push(format!("{name}: a `pub const` in Rust, not an enum constant of the header"));
        }
    }
    out
}

// ------------------------------------------------------------------ tests

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `src/capi/*.rs`, sorted, as `(path, text)`.
fn capi_sources() -> Vec<(String, String)> {
    let dir = root().join("src/capi");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| (format!("src/capi/{}", p.file_name().unwrap().to_string_lossy()), fs::read_to_string(p).unwrap()))
        .collect()
}

#[test]
fn header_matches_the_rust_declarations() {
    let header = fs::read_to_string(root().join("include/masked_rnn.h")).unwrap();
    let c = c_api(&header).unwrap_or_else(|e| panic!("include/masked_rnn.h: {e}"));
    let rust = rust_api(&capi_sources()).unwrap_or_else(|e| panic!("{e}"));
    // The parsers found what there is (a parser that finds nothing would compare nothing).
    assert!(c.functions.len() >= 60 && c.structs.len() == 6 && c.opaque.len() == 7, "{c:#?}");
    assert!(c.constants.len() == 6 && c.functions.contains_key("mrnn_keras_rnn_set_weights"), "{c:#?}");
    assert!(rust.functions.contains_key("mrnn_onnx_gru_run_backward"), "a macro-written function is missing");
    let diffs = differences(&c, &rust);
    assert!(diffs.is_empty(), "include/masked_rnn.h and src/capi differ:\n{}", diffs.join("\n"));
    println!(
        "{} functions, {} structs, {} opaque types, {} status codes agree",
        c.functions.len(),
        c.structs.len(),
        c.opaque.len(),
        c.constants.len()
    );
}

const MISMATCHED_HEADER: &str = r#"
#ifdef __cplusplus
extern "C" {
#endif
typedef struct { int64_t a, b; int32_t c[2]; float d; } MrnnS;
typedef struct MrnnH MrnnH;
typedef struct MrnnG MrnnG;
typedef enum MrnnStatus { MRNN_OK = 0, MRNN_ERR_X = 1, MRNN_ERR_C = 2 } MrnnStatus;
/* agrees */
int32_t mrnn_same(const MrnnH *h, float *y, MrnnH **out, const char *const *names);
int32_t mrnn_const(MrnnH *h);
int32_t mrnn_count(int32_t a, int32_t b);
int32_t mrnn_type(int64_t a);
int32_t mrnn_name(int32_t a);
void mrnn_ret(void);
int32_t mrnn_only_c(void);
#ifdef __cplusplus
}
#endif
"#;

const MISMATCHED_RUST: &str = r##"
/// `pub const MRNN_R: i32` is in Rust only.
pub const MRNN_OK: i32 = 0;
pub const MRNN_ERR_X: i32 = 3;
pub const MRNN_R: i32 = 4;
#[repr(C)]
#[derive(Debug)]
pub struct MrnnS {
    /// a
    pub a: i64,
    pub b: i64,
    pub d: f32,
    pub c: [i32; 2],
}
#[repr(C)]
pub struct MrnnG { x: u8 }
pub struct MrnnH { x: u8 }
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_same(h: *const MrnnH, y: *mut f32, out: *mut *mut MrnnH, names: *const *const c_char) -> i32 {
    let _ = r#"a "raw" string"#; let _ = 'x'; 0
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_const(h: *const MrnnH) -> i32 { 0 }
#[no_mangle]
pub extern "C" fn mrnn_count(a: i32) -> i32 { a }
macro_rules! typed {
    ($name:ident, $t:ty) => {
        #[doc = "written by a macro"]
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(a: $t) -> i32 { 0 }
    };
}
typed!(mrnn_type, std::primitive::i32);
#[unsafe(no_mangle)]
pub extern "C" fn mrnn_name(b: i32) -> i32 { 0 }
#[unsafe(no_mangle)]
pub extern "C" fn mrnn_ret() -> i32 { 0 }
#[unsafe(no_mangle)]
pub extern "C" fn mrnn_only_rust(u: *mut MrnnU) {}
"##;

#[test]
fn the_checker_reports_every_kind_of_difference() {
    let c = c_api(MISMATCHED_HEADER).unwrap();
    let rust = rust_api(&[("snippet.rs".into(), MISMATCHED_RUST.into())]).unwrap();
    let diffs = differences(&c, &rust);
    let expected = [
        "mrnn_const (snippet.rs): parameter 0 `h`: `MrnnH *` in the header, `const MrnnH *` in Rust (const-ness differs)",
        "mrnn_count (snippet.rs): 2 parameters in the header, 1 in Rust",
        "mrnn_type (snippet.rs, typed!): parameter 0 `a`: `int64_t` in the header, `int32_t` in Rust",
        "mrnn_name (snippet.rs): parameter 0 is `a` in the header, `b` in Rust",
        "mrnn_ret (snippet.rs): return type: `void` in the header, `int32_t` in Rust",
        "mrnn_only_c: declared in the header, not exported by the Rust source",
        "mrnn_only_rust: exported by snippet.rs, not declared in the header",
        "mrnn_only_rust (snippet.rs): type `MrnnU *` is not declared in the header",
        "MrnnS: field 2 is `int32_t c[2]` in the header, `float d` in Rust",
        "MrnnS: field 3 is `float d` in the header, `int32_t c[2]` in Rust",
        "MrnnG: a #[repr(C)] struct in Rust, opaque in the header",
        "MRNN_ERR_X: = 1 in the header, = 3 in Rust",
        "MRNN_ERR_C: an enum constant of the header, no `pub const MRNN_ERR_C` in Rust",
        "MRNN_R: a `pub const` in Rust, not an enum constant of the header",
    ];
    for e in expected {
        assert!(diffs.iter().any(|d| d == e), "missing: {e}\ngot:\n{}", diffs.join("\n"));
    }
    assert_eq!(diffs.len(), expected.len(), "unexpected differences:\n{}", diffs.join("\n"));
    assert!(!diffs.iter().any(|d| d.starts_with("mrnn_same")), "{diffs:?}");
}

#[test]
fn the_checker_refuses_what_it_cannot_read() {
    // A macro it cannot expand, an item it cannot map, a header statement it does not know.
    let several_rules = "macro_rules! m { ($a:ident) => { #[no_mangle] pub extern \"C\" fn $a() {} }; () => {}; }";
    let err = rust_api(&[("m.rs".into(), several_rules.into())]).unwrap_err();
    assert!(err.contains("several rules"), "{err}");
    let repetition = "macro_rules! m { ($($a:ident),*) => { $(#[no_mangle] pub extern \"C\" fn $a() {})* }; }";
    let err = rust_api(&[("m.rs".into(), repetition.into())]).unwrap_err();
    assert!(err.contains("cannot expand"), "{err}");
    let slice = "#[unsafe(no_mangle)] pub extern \"C\" fn mrnn_s(x: &[f32]) {}";
    let err = rust_api(&[("s.rs".into(), slice.into())]).unwrap_err();
    assert!(err.contains("parameter x"), "{err}");
    let private = "#[unsafe(no_mangle)] extern \"C\" fn mrnn_p() {}";
    assert!(rust_api(&[("p.rs".into(), private.into())]).unwrap_err().contains("not `pub"));
    let err = c_api("int32_t (*mrnn_fp)(int32_t);").unwrap_err();
    assert!(err.contains("not a"), "{err}");
    let err = c_api("#define X 1\nextern int mrnn_x;").unwrap_err();
    assert!(err.contains("unexpected statement"), "{err}");
    // And the agreeing parts of a file agree.
    let c = c_api("typedef struct { float a[3]; } MrnnA; const char *mrnn_v(void);").unwrap();
    let rust = "#[repr(C)] pub struct MrnnA { pub a: [f32; 3] }\n\
                #[unsafe(no_mangle)] pub extern \"C\" fn mrnn_v() -> *const std::ffi::c_char { c\"\".as_ptr() }";
    let rust = rust_api(&[("v.rs".into(), rust.into())]).unwrap();
    assert_eq!(differences(&c, &rust), Vec::<String>::new());
}
