//! Client-facing explanations of JSON that does not have the expected shape, shared by the REST
//! bodies (400 `bad_request`, contract §1) and the signaling messages (`bad_message`, contract
//! §2). serde's own errors name Rust types (`expected u64`, `expected struct LoginRequest`) and
//! no field; these name the field by its path and the expectation in JSON's terms.
//!
//! Only the error path pays for this: a document is first parsed the fast way, and only one
//! that failed is parsed again, through [`serde_path_to_error`], to learn where it failed.

use serde::Deserialize;

/// Why `text` is not a `T`, e.g. `` `seq`: invalid type: string "x", expected a non-negative
/// integer at line 1 column 25 ``. The path is dotted (`candidate.sdpMLineIndex`, `[2]` for an
/// array element) and omitted when the document itself is wrong (not JSON, not an object).
/// `None` when `text` is in fact a valid `T`.
pub fn explain<'de, T: Deserialize<'de>>(text: &'de str) -> Option<String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let e = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(_) => match de.end() {
            Ok(()) => return None,
            Err(e) => return Some(humanize(&e.to_string())),
        },
        Err(e) => e,
    };
    let path = e.path().to_string();
    let why = humanize(&e.into_inner().to_string());
    Some(if path == "." || path == "?" || path.is_empty() {
        why
    } else {
        format!("`{path}`: {why}")
    })
}

/// serde's names of Rust types in an error message → what a JSON document would hold, and
/// without the offending value: serde quotes it (`invalid type: string "…"`, ``integer `5` ``,
/// ``unknown variant `…` ``), and a value sent in the wrong place may be a password or a token,
/// or 60 KB long.
fn humanize(message: &str) -> String {
    json_terms(&without_values(message))
}

/// serde's names of Rust types in `message` (`expected u64`, `expected struct Settings`) →
/// what the document would hold (`expected a non-negative integer`, `expected an object`).
/// Values are left as they are (configuration errors show the operator's own value; secrets
/// are redacted before this, `crate::config`).
pub(crate) fn json_terms(message: &str) -> String {
    const TERMS: [(&str, &str); 12] = [
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        (
            "expected u16",
            "expected a non-negative integer up to 65535",
        ),
        ("expected u8", "expected a non-negative integer up to 255"),
        ("expected usize", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a borrowed string", "expected a string"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
        ("expected unit", "expected null"),
    ];
    let mut out = message.to_owned();
    for (rust, json) in TERMS {
        // Whole words only: `expected u64` must not turn `expected u640…` into nonsense.
        let mut from = 0;
        while let Some(at) = out[from..].find(rust).map(|i| i + from) {
            let end = at + rust.len();
            if out[end..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            {
                from = end;
                continue;
            }
            out.replace_range(at..end, json);
            from = at + json.len();
        }
    }
    // `expected struct LoginRequest` names an internal type.
    while let Some(at) = out.find("expected struct ") {
        let name_end = out[at + 16..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map_or(out.len(), |i| at + 16 + i);
        out.replace_range(at..name_end, "expected an object");
    }
    out
}

/// `message` with every value serde quoted replaced by the JSON kind of value it was.
fn without_values(message: &str) -> String {
    // What serde's `Unexpected` displays, and the JSON kind each means.
    const KINDS: [(&str, &str); 11] = [
        ("floating point `", "a number"),
        ("integer `", "an integer"),
        ("boolean `", "a boolean"),
        ("character `", "a string"),
        ("string \"", "a string"),
        ("unit value", "null"),
        ("Option value", "null"),
        ("sequence", "an array"),
        ("map", "an object"),
        ("byte array", "an array"),
        ("unknown variant `", "an unknown value"),
    ];
    let mut out = String::with_capacity(message.len().min(256));
    let mut rest = message;
    'scan: while !rest.is_empty() {
        for prefix in ["invalid type: ", "invalid value: ", ""] {
            let Some(after) = rest.strip_prefix(prefix) else {
                continue;
            };
            for (shown, kind) in KINDS {
                // A bare kind only after "invalid type/value: "; a quoted value anywhere.
                let quoted = shown.ends_with('`') || shown.ends_with('"');
                if (prefix.is_empty() && !quoted) || !after.starts_with(shown) {
                    continue;
                }
                let tail = &after[shown.len()..];
                let end = if shown.ends_with('"') {
                    closing_quote(tail)
                } else if quoted {
                    tail.find('`').map(|i| i + 1)
                } else {
                    Some(0)
                };
                if let Some(end) = end {
                    out.push_str(prefix);
                    out.push_str(kind);
                    rest = &tail[end..];
                    continue 'scan;
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// The byte just past the closing `"` of a Rust-`Debug`-escaped string whose opening quote
/// was already read.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Shape {
        seq: Option<u64>,
        name: Option<String>,
        inner: Option<Inner>,
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        index: Option<u16>,
    }

    #[test]
    fn the_field_is_named_and_the_expectation_is_in_json_terms() {
        let e = explain::<Shape>(r#"{"seq":"x"}"#).expect("refused");
        assert!(
            e.starts_with("`seq`: invalid type: a string, expected a non-negative integer"),
            "{e}"
        );
        let e = explain::<Shape>(r#"{"seq":-1}"#).expect("refused");
        assert!(
            e.contains("`seq`") && e.contains("non-negative integer"),
            "{e}"
        );
        let e = explain::<Shape>(r#"{"name":5}"#).expect("refused");
        assert!(
            e.starts_with("`name`: invalid type: an integer, expected a string"),
            "{e}"
        );
        // The value itself never comes back: it may be a password or a token.
        for (text, secret) in [
            (r#"{"name":1234567890123}"#, "1234567890123"),
            (r#"{"seq":"hunter2-secret"}"#, "hunter2-secret"),
            (r#"{"seq":"a \" b, expected \"x"}"#, "b, expected"),
            (r#"{"seq":-42}"#, "42"),
            (r#"{"name":4.5}"#, "4.5"),
            (r#"{"name":true}"#, "true"),
        ] {
            let e = explain::<Shape>(text).expect("refused");
            assert!(!e.contains(secret), "{text}: {e}");
        }
        let e = explain::<Shape>(r#"{"name":["x"]}"#).expect("refused");
        assert!(
            e.contains("invalid type: an array, expected a string"),
            "{e}"
        );
        let e = explain::<Shape>(r#"{"name":{}}"#).expect("refused");
        assert!(
            e.contains("invalid type: an object, expected a string"),
            "{e}"
        );
        // A syntax error has no field to name.
        let e = explain::<Shape>(r#"{"name":"x""#).expect("refused");
        assert!(!e.contains('?') && e.contains("EOF"), "{e}");
        let e = explain::<Shape>(r#"{"inner":{"index":70000}}"#).expect("refused");
        assert!(
            e.starts_with("`inner.index`: ") && e.contains("up to 65535"),
            "{e}"
        );
        let e = explain::<Shape>(r#"{"inner":"x"}"#).expect("refused");
        assert!(
            e.contains("expected an object") && !e.contains("Inner"),
            "{e}"
        );
        let e = explain::<Shape>("[1]").expect("refused");
        assert!(!e.contains("Shape") && !e.contains("struct"), "{e}");
        let e = explain::<Shape>(r#"{"seq":1} x"#).expect("trailing characters");
        assert!(e.contains("trailing characters"), "{e}");
        assert_eq!(explain::<Shape>(r#"{"seq":1}"#), None);
    }

    #[test]
    fn only_whole_type_names_are_replaced() {
        assert_eq!(humanize("expected u64"), "expected a non-negative integer");
        assert_eq!(
            humanize("unknown variant `hunter2`, expected one of `a`, `b`"),
            "an unknown value, expected one of `a`, `b`"
        );
        assert_eq!(
            humanize("invalid value: integer `-5`, expected u64"),
            "invalid value: an integer, expected a non-negative integer"
        );
        assert_eq!(humanize("expected u640"), "expected u640");
        assert_eq!(
            humanize("invalid type: map, expected struct Frame_1 at line 1"),
            "invalid type: an object, expected an object at line 1"
        );
    }
}
