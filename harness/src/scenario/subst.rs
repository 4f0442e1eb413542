//! `${axis}` substitution in scenario files, for one variant: only inside
//! string values (basic, literal and multi-line strings), never in comments,
//! keys or bare words. A value that is exactly `"${axis}"` becomes the axis
//! value with its own type; inside a longer string `${axis}` becomes its text.
//! `$${...}` is the escape: it stands for a literal `${...}`.

use toml::Value;

/// A `${name}` whose name is not an axis, at byte `offset` of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    pub offset: usize,
    pub name: String,
}

/// A value as plain text (strings without quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `s` escaped for the inside of a TOML basic string.
fn escape_basic(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

/// A value written as a TOML value of its own type.
fn typed(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", escape_basic(s)),
        other => other.to_string(),
    }
}

/// The kinds of TOML strings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

impl Quote {
    fn delim(self) -> &'static str {
        match self {
            Quote::Basic => "\"",
            Quote::Literal => "'",
            Quote::MultiBasic => "\"\"\"",
            Quote::MultiLiteral => "'''",
        }
    }
    fn escapes(self) -> bool {
        matches!(self, Quote::Basic | Quote::MultiBasic)
    }
}

/// Where the string starting at `start` (after its opening delimiter) ends:
/// the byte offset of its closing delimiter, or the end of the line (single
/// line) or text (multi-line) when unterminated (TOML reports that later).
fn string_end(text: &str, start: usize, q: Quote) -> usize {
    let b = text.as_bytes();
    let d = q.delim().as_bytes();
    let mut i = start;
    while i < b.len() {
        if q.escapes() && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if matches!(q, Quote::Basic | Quote::Literal) && b[i] == b'\n' {
            return i;
        }
        if b[i..].starts_with(d) {
            return i;
        }
        i += 1;
    }
    b.len()
}

/// Substitute inside one string's content (`base`: its offset in the file).
fn in_string(
    content: &str,
    base: usize,
    q: Quote,
    values: &[(String, Value)],
) -> Result<String, Unknown> {
    let mut o = String::with_capacity(content.len());
    let mut rest = content;
    let mut at = base;
    while let Some(p) = rest.find('$') {
        o.push_str(&rest[..p]);
        let tail = &rest[p..];
        if let Some(after) = tail.strip_prefix("$${") {
            o.push_str("${");
            rest = after;
            at += p + 3;
        } else if let Some(after) = tail.strip_prefix("${") {
            let name = after.split('}').next().unwrap_or(after);
            let Some((_, v)) = values.iter().find(|(k, _)| k == name).filter(|_| {
                after.len() > name.len() // closed by '}'
            }) else {
                return Err(Unknown { offset: at + p, name: name.to_string() });
            };
            let text = plain(v);
            o.push_str(&if q.escapes() { escape_basic(&text) } else { text });
            rest = &after[name.len() + 1..];
            at += p + 2 + name.len() + 1;
        } else {
            o.push('$');
            rest = &tail[1..];
            at += p + 1;
        }
    }
    o.push_str(rest);
    Ok(o)
}

/// Substitute `${axis}` in the string values of `text` for one variant.
pub fn substitute(text: &str, values: &[(String, Value)]) -> Result<String, Unknown> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let q = match b[i] {
            b'#' => {
                // A comment: up to the end of the line, untouched.
                i = text[i..].find('\n').map(|n| i + n).unwrap_or(b.len());
                continue;
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => Quote::MultiBasic,
            b'\'' if b[i..].starts_with(b"'''") => Quote::MultiLiteral,
            b'"' => Quote::Basic,
            b'\'' => Quote::Literal,
            _ => {
                i += 1;
                continue;
            }
        };
        let open = i + q.delim().len();
        let close = string_end(text, open, q);
        let end = (close + q.delim().len()).min(b.len());
        let next = text[end..].trim_start_matches([' ', '\t']);
        let is_key = next.starts_with('=') || next.starts_with('.');
        if !is_key && close < b.len() {
            let content = &text[open..close];
            out.push_str(&text[copied..i]);
            let whole = content.strip_prefix("${").and_then(|c| c.strip_suffix('}'));
            match whole.and_then(|n| values.iter().find(|(k, _)| k == n)) {
                Some((_, v)) if matches!(q, Quote::Basic | Quote::Literal) => {
                    out.push_str(&typed(v));
                }
                _ => {
                    out.push_str(q.delim());
                    out.push_str(&in_string(content, open, q, values)?);
                    out.push_str(q.delim());
                }
            }
            copied = end;
        }
        i = end;
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals() -> Vec<(String, Value)> {
        vec![
            ("dest".into(), Value::String("rust".into())),
            ("passes".into(), Value::Integer(5)),
            ("q".into(), Value::String("a\"b".into())),
        ]
    }

    #[test]
    fn only_values_are_substituted() {
        let t = "# uses ${nope} and ${dest}\nkind = \"${dest}\" # ${x}\npasses = \"${passes}\"\n\
                 time = \"${passes}ms\"\nlit = '${dest}-x'\n";
        let o = substitute(t, &vals()).unwrap();
        assert_eq!(
            o,
            "# uses ${nope} and ${dest}\nkind = \"rust\" # ${x}\npasses = 5\n\
             time = \"5ms\"\nlit = 'rust-x'\n"
        );
    }

    #[test]
    fn escape_and_quoting() {
        let o = substitute("d = \"$${dest} is ${dest}\"\ne = \"${q}\"\nf = \"x${q}\"\n", &vals())
            .unwrap();
        assert_eq!(o, "d = \"${dest} is rust\"\ne = \"a\\\"b\"\nf = \"xa\\\"b\"\n");
        let v: toml::Table = toml::from_str(&o).unwrap();
        assert_eq!(v["d"].as_str(), Some("${dest} is rust"));
        assert_eq!(v["f"].as_str(), Some("xa\"b"));
        // A quoted key is not a value; a multi-line string is.
        let o = substitute("\"${dest}\" = 1\nm = \"\"\"\n${dest}\n\"\"\"\n", &vals()).unwrap();
        assert_eq!(o, "\"${dest}\" = 1\nm = \"\"\"\nrust\n\"\"\"\n");
    }

    #[test]
    fn unknown_names_are_located() {
        let t = "a = 1\nb = \"x ${nope} y\"\n";
        let e = substitute(t, &vals()).unwrap_err();
        assert_eq!(e, Unknown { offset: t.find("${").unwrap(), name: "nope".into() });
        let e = substitute("b = \"${dest\"\n", &vals()).unwrap_err();
        assert_eq!(e.name, "dest");
        // Escaped quotes inside a value do not end it.
        let o = substitute("b = \"say \\\"${dest}\\\"\" # \"${zz}\"\n", &vals()).unwrap();
        assert_eq!(o, "b = \"say \\\"rust\\\"\" # \"${zz}\"\n");
    }

    /// A whole file: a comment mentioning `${x}` used to fail it.
    #[test]
    fn comments_do_not_fail_a_file() {
        use crate::scenario::file::load_str;
        let f =
            "# a comment about ${x}, with `$${y}`\nname = \"c\"\ndescription = \"shows $${x}\"\n\
                 [source]\nqemu = \"system\"\n[[steps]]\ndo = \"migrate\" # ${z}\n";
        let v = load_str(std::path::Path::new("c.toml"), f).unwrap();
        assert_eq!(v[0].spec.description.as_deref(), Some("shows ${x}"));
        let e = load_str(std::path::Path::new("c.toml"), &f.replace("shows $$", "shows $"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:3:") && e.contains("`${x}` is not an axis"), "{e}");
    }
}
