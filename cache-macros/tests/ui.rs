//! Malformed `#[cached]` attributes are compile errors pointing at the mistake.

#[test]
fn malformed_attributes_fail_with_a_span() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
