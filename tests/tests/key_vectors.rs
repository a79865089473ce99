//! `cache_core::key_for` against keys computed by an independent RFC 8785
//! implementation (Python's `rfc8785`, see tests/vectors/make_key_vectors.py):
//! any language with a JCS library computes the keys `#[cached]` uses.

use std::collections::{BTreeSet, HashMap};

use cache_core::{key_for, sha256_hex};
use serde::Serialize;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/vectors/key_vectors.json"
));

/// Fields declared out of order: the key sorts them.
#[derive(Serialize)]
struct Inner {
    z: Option<u8>,
    b: [bool; 2],
}

#[derive(Serialize)]
struct Nested {
    outer: Inner,
    a: u8,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Filter {
    Text(&'static str),
    Number(f64),
}

#[derive(Serialize)]
struct SearchQuery {
    query: String,
    top_k: u32,
    filters: HashMap<&'static str, Filter>,
    exact: bool,
}

#[derive(Serialize)]
enum Shape {
    Point,
    Circle(f64),
    Rect { w: u8, h: u8 },
}

/// `name => args` pairs: the Rust values of each case of the Python script.
macro_rules! cases {
    ($($name:literal => $args:expr),* $(,)?) => {
        vec![$(($name, key_for("v", &$args))),*]
    };
}

fn rust_keys() -> Vec<(&'static str, cache_core::Result<String>)> {
    const TWO_53: i64 = 1 << 53;
    cases![
        "ascii" => ("hello",),
        "non_ascii" => ("h\u{e9}llo w\u{f6}rld \u{65e5}\u{672c}".to_string(),),
        "control_characters" => ("\u{0}\u{1}\u{8}\t\n\u{c}\r\u{1f}",),
        "line_separators_and_del" => ("\u{2028}\u{2029}\u{7f}",),
        "quote_backslash_slash" => ("say \"hi\" \\ path/to",),
        "emoji_surrogate_pair" => ("\u{1F600} \u{1D11E}",),
        "empty_string" => ("",),
        "small_integers" => (0u8, -1i32, 42u64, 3usize),
        "two_pow_53_minus_1" => ((TWO_53 - 1) as u64, -(TWO_53 - 1)),
        "two_pow_53" => (TWO_53 as u64, -TWO_53),
        "two_pow_53_plus_1" => ((TWO_53 + 1) as u64, -TWO_53 - 1),
        "i64_edges" => (i64::MIN, i64::MAX),
        "u64_max" => (u64::MAX,),
        "i128_edges" => (i128::MIN, i128::MAX),
        "u128_max" => (u128::MAX,),
        "point_one" => (0.1f64,),
        "one_e_minus_7" => (1e-7f64,),
        "one_e_minus_6" => (1e-6f64,),
        "one_e_21" => (1e21f64,),
        "one_e_20" => (1e20f64,),
        "negative_zero" => (-0.0f64,),
        "five_point_zero" => (5.0f64,),
        "one_third" => (1.0f64 / 3.0,),
        "smallest_subnormal" => (f64::from_bits(1),),
        "f64_max" => (f64::MAX,),
        "f64_min_positive_normal" => (f64::MIN_POSITIVE,),
        "fractional" => (-123_456_789.125f64,),
        "f32_point_one" => (0.1f32,),
        "map_utf16_order" => (HashMap::from([("\u{ff61}", 3u8), ("\u{1F600}", 2), ("\u{e9}", 1), ("b", 0), ("a", 0)]),),
        "nested_map" => (Nested { outer: Inner { z: None, b: [true, false] }, a: 1 },),
        "integer_keyed_map" => (HashMap::from([(10u32, "ten"), (9, "nine")]),),
        "option_none_and_some" => (None::<String>, Some(3u8)),
        "tuple_and_array" => ("x", 2, vec![1, 2, 3], (true, None::<u8>)),
        "booleans" => (true, false),
        "unit_and_empty" => ((), Vec::<u8>::new(), HashMap::<String, u8>::new()),
        "search_struct" => (SearchQuery {
            query: "redis".into(),
            top_k: 10,
            filters: HashMap::from([("min_score", Filter::Number(0.5)), ("lang", Filter::Text("en"))]),
            exact: false,
        },),
        "enum_variants" => (vec![Shape::Point, Shape::Circle(2.0), Shape::Rect { w: 3, h: 4 }],),
    ]
}

#[test]
fn keys_match_the_independent_rfc8785_vectors() {
    let document: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    let vectors = document["vectors"].as_array().unwrap();
    let expected: HashMap<&str, (&str, &str)> = vectors
        .iter()
        .map(|v| {
            let field = |name: &str| v[name].as_str().unwrap();
            (field("name"), (field("json"), field("key")))
        })
        .collect();
    let rust = rust_keys();

    let rust_names: BTreeSet<&str> = rust.iter().map(|(name, _)| *name).collect();
    let file_names: BTreeSet<&str> = expected.keys().copied().collect();
    assert_eq!(
        rust_names, file_names,
        "every vector has a Rust case and back"
    );

    let mut mismatches = Vec::new();
    for (name, key) in rust {
        let (json, expected_key) = expected[name];
        // The file is consistent: the key is the SHA-256 of the JSON shown.
        assert_eq!(
            expected_key,
            format!("v:{}", sha256_hex(json.as_bytes())),
            "{name}"
        );
        if key.as_deref().ok() != Some(expected_key) {
            mismatches.push(format!("{name}: expected the key of {json}, got {key:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn equal_hash_maps_give_one_key_whatever_their_iteration_order() {
    // Two maps with different insertion histories (and a HashMap's random
    // seed per instance) iterate in different orders.
    let forward: HashMap<String, u32> = (0..64).map(|i| (format!("k{i}"), i)).collect();
    let backward: HashMap<String, u32> = (0..64).rev().map(|i| (format!("k{i}"), i)).collect();
    assert_eq!(
        key_for("m", &(&forward,)).unwrap(),
        key_for("m", &(&backward,)).unwrap()
    );
}

#[test]
fn integers_beyond_two_pow_53_keep_distinct_keys() {
    // Rounded through a double these would be one number.
    let a = (1u64 << 53) + 1;
    let b = 1u64 << 53;
    assert_ne!(key_for("id", &(a,)).unwrap(), key_for("id", &(b,)).unwrap());
    assert_ne!(
        key_for("id", &(u64::MAX,)).unwrap(),
        key_for("id", &(u64::MAX - 1,)).unwrap()
    );
    assert_ne!(
        key_for("id", &(i64::MIN,)).unwrap(),
        key_for("id", &(i64::MIN + 1,)).unwrap()
    );
}

#[test]
fn nan_and_infinities_have_no_key() {
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(key_for("p", &(value,)).is_err());
        assert!(key_for("p", &(HashMap::from([("x", value)]),)).is_err());
        assert!(key_for("p", &(vec![1.0, value],)).is_err());
    }
    assert!(key_for("p", &(f32::INFINITY,)).is_err());
}
