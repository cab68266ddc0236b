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
    Some(if path == "." || path.is_empty() {
        why
    } else {
        format!("`{path}`: {why}")
    })
}

/// serde's names of Rust types in an error message → what a JSON document would hold.
fn humanize(message: &str) -> String {
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
            e.starts_with("`seq`: invalid type: string \"x\", expected a non-negative integer"),
            "{e}"
        );
        let e = explain::<Shape>(r#"{"seq":-1}"#).expect("refused");
        assert!(
            e.contains("`seq`") && e.contains("non-negative integer"),
            "{e}"
        );
        let e = explain::<Shape>(r#"{"name":5}"#).expect("refused");
        assert!(
            e.starts_with("`name`: invalid type: integer `5`, expected a string"),
            "{e}"
        );
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
        assert_eq!(humanize("expected u640"), "expected u640");
        assert_eq!(
            humanize("invalid type: map, expected struct Frame_1 at line 1"),
            "invalid type: map, expected an object at line 1"
        );
    }
}
