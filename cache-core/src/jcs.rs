//! RFC 8785 (JSON Canonicalization Scheme) text of any `Serialize` value,
//! written straight into an `io::Write` (for keys: into the SHA-256).
//!
//! Arrays, strings, numbers and the other scalars stream: the common key
//! (strings, integers, tuples, sequences) allocates nothing. Only an object
//! (a map, a struct) is buffered, because RFC 8785 writes its members sorted
//! by the UTF-16 code units of their names, whatever order they came in.
//!
//! - Strings: minimal escaping, as serde_json does and RFC 8785 asks (`"`, `\`,
//!   `\b \f \n \r \t`, other control characters as `\u00xx`; everything else,
//!   U+2028 and non-ASCII included, as UTF-8).
//! - Floats: the shortest ECMAScript form (`1`, `0.1`, `1e-7`, `1e+21`,
//!   `-0` as `0`). NaN and infinities have no JSON form: an error.
//! - Integers: exact decimals, whatever their size. Within ±2^53 this is what
//!   RFC 8785 writes; beyond, RFC 8785 would round them through an IEEE double
//!   (so that two snowflake IDs could share a key), and we write them exactly,
//!   as serde_json and Python's `json` do. This is our one extension of JCS.
//!   An `f32` is written as the shortest decimal that reads back as the same
//!   `f32` (what serde_json writes), in the same ECMAScript form.
//! - serde_json's `RawValue` (and its `Number` with `arbitrary_precision`):
//!   the JSON text is parsed and canonicalized like any other value; an
//!   integer literal in it beyond the i64/u64 ranges (beyond i128/u128 for a
//!   `Number`) is an error, since serde_json would round it through an f64.
//! - Map keys: strings, chars, integers and bools (as their decimal or
//!   `true`/`false` text, like serde_json), unit variants; two members of one
//!   object with the same name are an error (no JCS form).

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::io::Write;
use std::ops::Range;

use serde::Serialize;
use serde::ser::{self, Error as _, Impossible};
use serde_json::Error;

type Result<T> = std::result::Result<T, Error>;

/// Writes the canonical JSON of `value` into `out`.
pub(crate) fn to_writer<W: Write, T: Serialize + ?Sized>(out: W, value: &T) -> Result<()> {
    value.serialize(&mut Canonical { out })
}

/// The canonical JSON of `value`, as bytes.
#[cfg(test)]
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    to_writer(&mut out, value)?;
    Ok(out)
}

const NON_FINITE: &str = "NaN and infinity have no JSON form (RFC 8785)";

/// The serializer: `out` is where the text goes.
struct Canonical<W> {
    out: W,
}

impl<W: Write> Canonical<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(Error::io)
    }

    /// serde_json over the same output, for what it already writes the
    /// canonical way: escaped strings and integers.
    fn json(&mut self) -> serde_json::Serializer<&mut W> {
        serde_json::Serializer::new(&mut self.out)
    }

    fn string(&mut self, value: &str) -> Result<()> {
        // Most key strings need no escape: written as they are (what
        // serde_json writes for them), without its byte-by-byte escaping
        // loop. The check is branch-free, so it runs at memory speed.
        let plain = !value.bytes().fold(false, |escape, byte| {
            escape | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
        });
        if plain {
            self.write(b"\"")?;
            self.write(value.as_bytes())?;
            return self.write(b"\"");
        }
        ser::Serializer::serialize_str(&mut self.json(), value)
    }

    fn float<F: ryu_js::Float>(&mut self, value: F, finite: bool) -> Result<()> {
        if !finite {
            return Err(Error::custom(NON_FINITE));
        }
        // ECMAScript's Number::toString, which RFC 8785 prescribes; -0 is "0".
        let mut buffer = ryu_js::Buffer::new();
        let text = buffer.format_finite(value);
        self.out.write_all(text.as_bytes()).map_err(Error::io)
    }

    /// A JSON number given as text (serde_json's `arbitrary_precision`):
    /// integers stay exact, anything else takes its ECMAScript form.
    fn number_text(&mut self, text: &str) -> Result<()> {
        if let Ok(integer) = text.parse::<i128>() {
            return ser::Serializer::serialize_i128(&mut self.json(), integer);
        }
        if let Ok(integer) = text.parse::<u128>() {
            return ser::Serializer::serialize_u128(&mut self.json(), integer);
        }
        if is_integer_literal(text) {
            return Err(Error::custom(BEYOND_64_BITS));
        }
        let float: f64 = text
            .parse()
            .map_err(|_| Error::custom("a JSON number that is not a number"))?;
        self.float(float, float.is_finite())
    }

    /// `{"name":` of an enum variant written as a one-member object (nothing to sort).
    fn open_variant(&mut self, variant: &str) -> Result<()> {
        self.write(b"{")?;
        self.string(variant)?;
        self.write(b":")
    }
}

/// The integer methods of a serializer that hands integers to serde_json's
/// own writer (`self.json()`).
macro_rules! integers_as_serde_json {
    ($($method:ident: $ty:ty),+ $(,)?) => {$(
        fn $method(self, value: $ty) -> Result<()> {
            ser::Serializer::$method(&mut self.json(), value)
        }
    )+};
}

impl<'a, W: Write> ser::Serializer for &'a mut Canonical<W> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a, W>;
    type SerializeTuple = Array<'a, W>;
    type SerializeTupleStruct = Array<'a, W>;
    type SerializeTupleVariant = Array<'a, W>;
    type SerializeMap = Object<'a, W>;
    type SerializeStruct = Object<'a, W>;
    type SerializeStructVariant = Object<'a, W>;

    fn serialize_bool(self, value: bool) -> Result<()> {
        self.write(if value { b"true" } else { b"false" })
    }
    // Integers are exact decimals, as serde_json writes them (JCS's form
    // up to 2^53, our documented extension beyond).
    integers_as_serde_json!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128,
    );
    fn serialize_f32(self, value: f32) -> Result<()> {
        self.float(value, value.is_finite())
    }
    fn serialize_f64(self, value: f64) -> Result<()> {
        self.float(value, value.is_finite())
    }
    fn serialize_char(self, value: char) -> Result<()> {
        self.string(value.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, value: &str) -> Result<()> {
        self.string(value)
    }
    fn serialize_bytes(self, value: &[u8]) -> Result<()> {
        // As serde_json: an array of numbers.
        let mut array = self.serialize_seq(Some(value.len()))?;
        for byte in value {
            ser::SerializeSeq::serialize_element(&mut array, byte)?;
        }
        ser::SerializeSeq::end(array)
    }
    fn serialize_none(self) -> Result<()> {
        self.write(b"null")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<()> {
        self.write(b"null")
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.write(b"null")
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<()> {
        self.string(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.open_variant(variant)?;
        value.serialize(&mut *self)?;
        self.write(b"}")
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a, W>> {
        self.write(b"[")?;
        Ok(Array {
            ser: self,
            first: true,
            close: b"]",
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a, W>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Array<'a, W>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a, W>> {
        self.open_variant(variant)?;
        self.write(b"[")?;
        Ok(Array {
            ser: self,
            first: true,
            close: b"]}",
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Object<'a, W>> {
        Ok(Object::new(self, len.unwrap_or(0), b"}"))
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Object<'a, W>> {
        let mut object = Object::new(self, len, b"}");
        object.verbatim = Verbatim::of(name);
        Ok(object)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Object<'a, W>> {
        self.open_variant(variant)?;
        Ok(Object::new(self, len, b"}}"))
    }
}

/// An array being written: elements stream as they come.
pub(crate) struct Array<'a, W> {
    ser: &'a mut Canonical<W>,
    first: bool,
    close: &'static [u8],
}

impl<W: Write> Array<'_, W> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        if !std::mem::take(&mut self.first) {
            self.ser.write(b",")?;
        }
        value.serialize(&mut *self.ser)
    }

    fn close(self) -> Result<()> {
        self.ser.write(self.close)
    }
}

/// serde's four array-shaped compounds are one thing here: elements
/// streamed in order between brackets.
macro_rules! array_compound {
    ($($trait:ident :: $method:ident),+ $(,)?) => {$(
        impl<W: Write> ser::$trait for Array<'_, W> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
                self.element(value)
            }
            fn end(self) -> Result<()> {
                self.close()
            }
        }
    )+};
}

array_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

/// serde_json's private structs that carry JSON text: its `RawValue` (feature
/// `raw_value`, which axum turns on) and its `Number` with the feature
/// `arbitrary_precision`. Their text is canonicalized, not written as an object.
#[derive(Clone, Copy)]
enum Verbatim {
    Json,
    Number,
}

impl Verbatim {
    fn of(struct_name: &str) -> Option<Verbatim> {
        match struct_name {
            "$serde_json::private::RawValue" => Some(Verbatim::Json),
            "$serde_json::private::Number" => Some(Verbatim::Number),
            _ => None,
        }
    }
}

/// A member's name: a struct field's, or a map key's text in the object's
/// `names` buffer.
enum Name {
    Field(&'static str),
    Key(Range<usize>),
}

/// One member of an object: its name, and where its canonical value sits
/// in the object's `values` buffer.
struct Member {
    name: Name,
    value: Range<usize>,
}

/// An object being written: members are kept until the end, then written
/// sorted by the UTF-16 code units of their names (RFC 8785, 3.2.3). Names
/// and values share two buffers: three allocations per object at most,
/// whatever its size.
pub(crate) struct Object<'a, W> {
    ser: &'a mut Canonical<W>,
    members: Vec<Member>,
    names: String,
    values: Vec<u8>,
    pending: Option<Name>,
    close: &'static [u8],
    /// Set for serde_json's text-carrying structs: their one field's text
    /// goes to `names`.
    verbatim: Option<Verbatim>,
}

impl<'a, W: Write> Object<'a, W> {
    fn new(ser: &'a mut Canonical<W>, len: usize, close: &'static [u8]) -> Self {
        Object {
            ser,
            members: Vec::with_capacity(len),
            // Room for short names and values: most objects never grow them.
            names: String::with_capacity(len * 8),
            values: Vec::with_capacity(len * 8),
            pending: None,
            close,
            verbatim: None,
        }
    }

    fn member<T: Serialize + ?Sized>(&mut self, name: Name, value: &T) -> Result<()> {
        let start = self.values.len();
        value.serialize(&mut Canonical {
            out: &mut self.values,
        })?;
        self.members.push(Member {
            name,
            value: start..self.values.len(),
        });
        Ok(())
    }

    fn close(mut self) -> Result<()> {
        match self.verbatim {
            Some(Verbatim::Json) => {
                // serde_json's `Value` reads an integer beyond the i64/u64
                // range as an f64: neighbouring IDs would share one key.
                if has_integer_beyond_64_bits(&self.names) {
                    return Err(Error::custom(BEYOND_64_BITS));
                }
                let value: serde_json::Value = serde_json::from_str(&self.names)?;
                return value.serialize(&mut *self.ser);
            }
            Some(Verbatim::Number) => return self.ser.number_text(&self.names),
            None => {}
        }
        let names = self.names.as_str();
        let text = |name: &Name| match name {
            Name::Field(field) => *field,
            Name::Key(range) => names.get(range.clone()).unwrap_or_default(),
        };
        self.members
            .sort_by(|a, b| utf16_order(text(&a.name), text(&b.name)));
        // Not named in the error: a member name may be user data.
        if self
            .members
            .windows(2)
            .any(|pair| text(&pair[0].name) == text(&pair[1].name))
        {
            return Err(Error::custom(
                "two members of one object have the same name (no RFC 8785 form)",
            ));
        }
        self.ser.write(b"{")?;
        for (index, member) in self.members.iter().enumerate() {
            if index > 0 {
                self.ser.write(b",")?;
            }
            self.ser.string(text(&member.name))?;
            self.ser.write(b":")?;
            self.ser.write(&self.values[member.value.clone()])?;
        }
        self.ser.write(self.close)
    }
}

const BEYOND_64_BITS: &str =
    "an integer in JSON text beyond what the key keeps exact (no RFC 8785 form)";

/// `true` for a JSON number written as an integer (no fraction, no exponent).
fn is_integer_literal(number: &str) -> bool {
    !number.contains(['.', 'e', 'E'])
}

/// `true` when the JSON text (valid: a `RawValue`'s) holds an integer
/// literal outside the i64 and u64 ranges, which serde_json's `Value` would
/// round through an f64. Strings are skipped, escapes included.
fn has_integer_beyond_64_bits(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => {
                at += 1;
                while let Some(&byte) = bytes.get(at) {
                    at += if byte == b'\\' { 2 } else { 1 };
                    if byte == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                while bytes
                    .get(at)
                    .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    at += 1;
                }
                let number = json.get(start..at).unwrap_or_default();
                if is_integer_literal(number)
                    && number.parse::<i64>().is_err()
                    && number.parse::<u64>().is_err()
                {
                    return true;
                }
            }
            _ => at += 1,
        }
    }
    false
}

/// Orders two names by their UTF-16 code units, as RFC 8785 sorts members.
/// UTF-8 byte order is code point order, which agrees with UTF-16 order
/// except between U+E000..U+FFFF (lead bytes 0xEE, 0xEF) and the
/// supplementary planes (0xF0..): only a difference there needs UTF-16.
fn utf16_order(a: &str, b: &str) -> Ordering {
    match a.bytes().zip(b.bytes()).find(|(x, y)| x != y) {
        Some((x, y)) if x < 0xEE && y < 0xEE => x.cmp(&y),
        Some(_) => a.encode_utf16().cmp(b.encode_utf16()),
        None => a.len().cmp(&b.len()),
    }
}

impl<W: Write> ser::SerializeMap for Object<'_, W> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        let start = self.names.len();
        key.serialize(MemberName(&mut self.names))?;
        self.pending = Some(Name::Key(start..self.names.len()));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let name = self
            .pending
            .take()
            .ok_or_else(|| Error::custom("a map value came without its key"))?;
        self.member(name, value)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl<W: Write> ser::SerializeStruct for Object<'_, W> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        if self.verbatim.is_some() {
            return value.serialize(MemberName(&mut self.names));
        }
        self.member(Name::Field(key), value)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl<W: Write> ser::SerializeStructVariant for Object<'_, W> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        self.member(Name::Field(key), value)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

/// Writes a map key as a member name into the object's `names`, as
/// serde_json turns keys into names.
struct MemberName<'b>(&'b mut String);

impl MemberName<'_> {
    fn push(self, text: impl std::fmt::Display) -> Result<()> {
        write!(self.0, "{text}").map_err(Error::custom)
    }
}

fn not_a_name() -> Error {
    Error::custom("a map key must be a string, a char, an integer or a bool")
}

impl ser::Serializer for MemberName<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_str(self, value: &str) -> Result<()> {
        self.0.push_str(value);
        Ok(())
    }
    fn serialize_char(self, value: char) -> Result<()> {
        self.push(value)
    }
    fn serialize_bool(self, value: bool) -> Result<()> {
        self.push(value)
    }
    fn serialize_i8(self, value: i8) -> Result<()> {
        self.push(value)
    }
    fn serialize_i16(self, value: i16) -> Result<()> {
        self.push(value)
    }
    fn serialize_i32(self, value: i32) -> Result<()> {
        self.push(value)
    }
    fn serialize_i64(self, value: i64) -> Result<()> {
        self.push(value)
    }
    fn serialize_i128(self, value: i128) -> Result<()> {
        self.push(value)
    }
    fn serialize_u8(self, value: u8) -> Result<()> {
        self.push(value)
    }
    fn serialize_u16(self, value: u16) -> Result<()> {
        self.push(value)
    }
    fn serialize_u32(self, value: u32) -> Result<()> {
        self.push(value)
    }
    fn serialize_u64(self, value: u64) -> Result<()> {
        self.push(value)
    }
    fn serialize_u128(self, value: u128) -> Result<()> {
        self.push(value)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<()> {
        self.0.push_str(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_f32(self, _value: f32) -> Result<()> {
        Err(not_a_name())
    }
    fn serialize_f64(self, _value: f64) -> Result<()> {
        Err(not_a_name())
    }
    fn serialize_bytes(self, _value: &[u8]) -> Result<()> {
        Err(not_a_name())
    }
    fn serialize_none(self) -> Result<()> {
        Err(not_a_name())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<()> {
        Err(not_a_name())
    }
    fn serialize_unit(self) -> Result<()> {
        Err(not_a_name())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        Err(not_a_name())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<()> {
        Err(not_a_name())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(not_a_name())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple> {
        Err(not_a_name())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(not_a_name())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(not_a_name())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap> {
        Err(not_a_name())
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct> {
        Err(not_a_name())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(not_a_name())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    use super::to_vec;

    fn text<T: Serialize + ?Sized>(value: &T) -> String {
        String::from_utf8(to_vec(value).unwrap()).unwrap()
    }

    #[test]
    fn numbers_take_their_shortest_ecmascript_form() {
        assert_eq!(text(&1.0f64), "1");
        assert_eq!(text(&5.0f64), "5");
        assert_eq!(text(&-0.0f64), "0");
        assert_eq!(text(&0.1f64), "0.1");
        assert_eq!(text(&1e-7f64), "1e-7");
        assert_eq!(text(&1e-6f64), "0.000001");
        assert_eq!(text(&1e20f64), "100000000000000000000");
        assert_eq!(text(&1e21f64), "1e+21");
        assert_eq!(text(&f64::MAX), "1.7976931348623157e+308");
        assert_eq!(text(&f64::from_bits(1)), "5e-324");
        assert_eq!(text(&(1.0f64 / 3.0)), "0.3333333333333333");
        assert_eq!(text(&0.1f32), "0.1");
        assert_eq!(text(&1e-7f32), "1e-7");
        assert_eq!(text(&-0.0f32), "0");
    }

    #[test]
    fn integers_are_exact_at_every_size() {
        assert_eq!(text(&9_007_199_254_740_993u64), "9007199254740993");
        assert_eq!(text(&u64::MAX), "18446744073709551615");
        assert_eq!(text(&i64::MIN), "-9223372036854775808");
        assert_eq!(text(&i128::MIN), "-170141183460469231731687303715884105728");
        assert_eq!(text(&u128::MAX), "340282366920938463463374607431768211455");
    }

    #[test]
    fn nan_and_infinities_have_no_form() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(to_vec(&(value,)).is_err());
            assert!(to_vec(&vec![1.0, value]).is_err());
        }
        assert!(to_vec(&f32::NAN).is_err());
        assert!(to_vec(&HashMap::from([("k", f64::INFINITY)])).is_err());
    }

    #[test]
    fn strings_are_minimally_escaped() {
        assert_eq!(
            text("\u{8}\t\n\u{c}\r\u{1}\u{1f}\u{7f}\"\\/é\u{2028}😀"),
            "\"\\b\\t\\n\\f\\r\\u0001\\u001f\u{7f}\\\"\\\\/é\u{2028}😀\""
        );
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        // The plain fast path and the escaping one, around every ASCII
        // character and some others.
        let mut chars: Vec<char> = (0u8..128).map(char::from).collect();
        chars.extend(['é', '\u{2028}', '😀', '\u{ff61}']);
        for c in chars {
            for value in [
                format!("{c}"),
                format!("key {c} of {c}{c}"),
                "x".repeat(40) + &c.to_string(),
            ] {
                assert_eq!(
                    text(&value),
                    serde_json::to_string(&value).unwrap(),
                    "{value:?}"
                );
            }
        }
    }

    #[test]
    fn members_are_sorted_by_utf16_code_units() {
        // By UTF-8 bytes or code points U+FF61 would come before U+1F600;
        // in UTF-16 the surrogate 0xD83D comes first.
        let map = HashMap::from([("\u{ff61}", 3), ("😀", 2), ("é", 1), ("b", 0), ("a", 0)]);
        assert_eq!(
            text(&map),
            "{\"a\":0,\"b\":0,\"é\":1,\"😀\":2,\"\u{ff61}\":3}"
        );
    }

    #[test]
    fn utf16_order_agrees_with_encode_utf16_everywhere() {
        let names = [
            "",
            "a",
            "ab",
            "b",
            "\u{7f}",
            "\u{80}",
            "\u{7ff}",
            "\u{800}",
            "\u{d7ff}",
            "\u{e000}",
            "\u{ff61}",
            "\u{ffff}",
            "\u{10000}",
            "\u{1f600}",
            "\u{10ffff}",
            "a\u{ffff}",
            "a\u{10000}",
        ];
        for a in names {
            for b in names {
                assert_eq!(
                    super::utf16_order(a, b),
                    a.encode_utf16().cmp(b.encode_utf16()),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn structs_are_objects_with_sorted_fields() {
        #[derive(Serialize)]
        struct Query {
            zeta: Option<u8>,
            alpha: (bool, [u8; 2]),
            nested: BTreeMap<u32, &'static str>,
        }
        let query = Query {
            zeta: None,
            alpha: (true, [1, 2]),
            nested: BTreeMap::from([(10, "ten"), (9, "nine")]),
        };
        // Integer keys are names: "10" sorts before "9".
        assert_eq!(
            text(&query),
            r#"{"alpha":[true,[1,2]],"nested":{"10":"ten","9":"nine"},"zeta":null}"#
        );
    }

    #[test]
    fn enums_are_written_as_serde_json_writes_them() {
        #[derive(Serialize)]
        enum Shape {
            Point,
            Circle(f64),
            Segment(u8, u8),
            Rect { w: u8, h: u8 },
        }
        let shapes = [
            Shape::Point,
            Shape::Circle(2.0),
            Shape::Segment(1, 2),
            Shape::Rect { w: 3, h: 4 },
        ];
        assert_eq!(
            text(&shapes),
            r#"["Point",{"Circle":2},{"Segment":[1,2]},{"Rect":{"h":4,"w":3}}]"#
        );
    }

    #[test]
    fn raw_json_values_are_canonicalized() {
        let raw = serde_json::value::RawValue::from_string(
            r#"{ "b": [1.0, 1E-7, "\u00e9"], "a": 12345678901234567890 }"#.to_string(),
        )
        .unwrap();
        assert_eq!(
            text(&("x", &raw)),
            r#"["x",{"a":12345678901234567890,"b":[1,1e-7,"é"]}]"#
        );
    }

    #[test]
    fn raw_integers_beyond_64_bits_are_never_rounded_into_one_key() {
        let raw = |text: &str| serde_json::value::RawValue::from_string(text.to_string()).unwrap();
        // serde_json's `Value` reads these as the same f64: two IDs, one key.
        for text in [
            "18446744073709551616",
            "[1, -9223372036854775809]",
            r#"{"id": 123456789012345678901234567890, "s": "1"}"#,
        ] {
            assert!(to_vec(&raw(text)).is_err(), "{text}");
        }
        // Within 64 bits, in strings, or written as floats: as before.
        assert_eq!(
            text(&raw(
                r#"[18446744073709551615, -9223372036854775808, "18446744073709551616\"", 1e30, 2.5]"#
            )),
            r#"[18446744073709551615,-9223372036854775808,"18446744073709551616\"",1e+30,2.5]"#
        );
    }

    #[test]
    fn number_texts_beyond_128_bits_are_errors_not_floats() {
        // serde_json's `Number` with `arbitrary_precision` carries its text.
        let number = |text: &str| {
            let mut ser = super::Canonical { out: Vec::new() };
            ser.number_text(text)
                .map(|()| String::from_utf8(ser.out).unwrap())
        };
        assert_eq!(
            number("340282366920938463463374607431768211455").unwrap(),
            "340282366920938463463374607431768211455"
        );
        assert!(number("340282366920938463463374607431768211456").is_err());
        assert!(number("-170141183460469231731687303715884105729").is_err());
        assert_eq!(number("3.4e38").unwrap(), "3.4e+38");
    }

    #[test]
    fn equal_maps_give_equal_text_whatever_their_order() {
        let a: HashMap<String, u32> = (0..100).map(|i| (format!("k{i}"), i)).collect();
        let b: HashMap<String, u32> = (0..100).rev().map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(to_vec(&a).unwrap(), to_vec(&b).unwrap());
    }

    #[test]
    fn keys_that_are_not_names_and_duplicate_names_are_errors() {
        assert!(to_vec(&HashMap::from([(vec![1u8], 1)])).is_err());
        #[derive(Serialize)]
        struct Twice {
            a: u8,
            #[serde(rename = "a")]
            b: u8,
        }
        assert!(to_vec(&Twice { a: 1, b: 2 }).is_err());
    }

    #[test]
    fn units_chars_options_and_json_values() {
        assert_eq!(
            text(&((), 'x', Some(1u8), None::<u8>)),
            r#"[null,"x",1,null]"#
        );
        let value = serde_json::json!({"b": [1.5, 2.0, -0.0], "a": null});
        assert_eq!(text(&value), r#"{"a":null,"b":[1.5,2,0]}"#);
    }
}
