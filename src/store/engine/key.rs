//! Order-preserving key encoding: a table's typed keys as bytes that sort as
//! the keys do, so that both engines range over plain byte strings (redb's
//! `&[u8]` order and PostgreSQL's `bytea` order are both memcmp).
//!
//! Integers are big-endian (signed ones with the sign bit flipped); a string
//! is its bytes with each 0x00 written 0x00 0xFF, ended by 0x00 0x00, so a
//! string sorts before every longer string it begins and the parts of a tuple
//! never run into each other.

/// A key, borrowed or owned, that encodes to the same bytes as its [`Key::Owned`] form.
pub trait Key {
    type Owned: Decode;
    fn encode_into(&self, out: &mut Vec<u8>);

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        self.encode_into(&mut out);
        out
    }
}

/// A key read back from its bytes; `None` when the bytes are not such a key.
pub trait Decode: Sized {
    fn decode_from(bytes: &mut &[u8]) -> Option<Self>;

    fn decode(mut bytes: &[u8]) -> Option<Self> {
        let key = Self::decode_from(&mut bytes)?;
        bytes.is_empty().then_some(key)
    }
}

impl Key for u64 {
    type Owned = u64;
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}

impl Decode for u64 {
    fn decode_from(bytes: &mut &[u8]) -> Option<Self> {
        let (head, rest) = bytes.split_first_chunk::<8>()?;
        *bytes = rest;
        Some(u64::from_be_bytes(*head))
    }
}

impl Key for i64 {
    type Owned = i64;
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&((*self as u64) ^ (1 << 63)).to_be_bytes());
    }
}

impl Decode for i64 {
    fn decode_from(bytes: &mut &[u8]) -> Option<Self> {
        u64::decode_from(bytes).map(|raw| (raw ^ (1 << 63)) as i64)
    }
}

impl Key for str {
    type Owned = String;
    fn encode_into(&self, out: &mut Vec<u8>) {
        for &byte in self.as_bytes() {
            out.push(byte);
            if byte == 0 {
                out.push(0xFF);
            }
        }
        out.extend_from_slice(&[0, 0]);
    }
}

impl Key for String {
    type Owned = String;
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.as_str().encode_into(out);
    }
}

impl<K: Key + ?Sized> Key for &K {
    type Owned = K::Owned;
    fn encode_into(&self, out: &mut Vec<u8>) {
        (**self).encode_into(out);
    }
}

impl Decode for String {
    fn decode_from(bytes: &mut &[u8]) -> Option<Self> {
        let mut text = Vec::new();
        let mut rest = *bytes;
        loop {
            match rest {
                [0, 0, tail @ ..] => {
                    rest = tail;
                    break;
                }
                [0, 0xFF, tail @ ..] => {
                    text.push(0);
                    rest = tail;
                }
                [byte, tail @ ..] if *byte != 0 => {
                    text.push(*byte);
                    rest = tail;
                }
                _ => return None,
            }
        }
        *bytes = rest;
        String::from_utf8(text).ok()
    }
}

/// A key as it is stored: every byte of it (for copying tables whole).
impl Key for Vec<u8> {
    type Owned = Vec<u8>;
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl Decode for Vec<u8> {
    fn decode_from(bytes: &mut &[u8]) -> Option<Self> {
        let all = bytes.to_vec();
        *bytes = &[];
        Some(all)
    }
}

macro_rules! tuple_key {
    ($($part:ident),+) => {
        impl<$($part: Key),+> Key for ($($part,)+) {
            type Owned = ($($part::Owned,)+);
            #[allow(non_snake_case)]
            fn encode_into(&self, out: &mut Vec<u8>) {
                let ($($part,)+) = self;
                $($part.encode_into(out);)+
            }
        }

        impl<$($part: Decode),+> Decode for ($($part,)+) {
            fn decode_from(bytes: &mut &[u8]) -> Option<Self> {
                Some(($($part::decode_from(bytes)?,)+))
            }
        }
    };
}
tuple_key!(A, B);
tuple_key!(A, B, C);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_keys_sort_as_the_keys_do_and_decode_back() {
        let strings = ["", "\0", "\0\0", "a", "a\0", "a\0b", "ab", "b", "é"];
        let numbers = [i64::MIN, -1, 0, 1, i64::MAX];
        let mut keys: Vec<(String, i64, u64)> = Vec::new();
        for s in strings {
            for n in numbers {
                for u in [0, 7, u64::MAX] {
                    keys.push((s.to_owned(), n, u));
                }
            }
        }
        let mut by_bytes = keys.clone();
        by_bytes.sort_by_key(|key| key.encode());
        keys.sort();
        assert_eq!(by_bytes, keys);
        for key in &keys {
            assert_eq!(
                <(String, i64, u64)>::decode(&key.encode()).as_ref(),
                Some(key)
            );
        }
    }

    #[test]
    fn a_borrowed_key_encodes_as_its_owned_form() {
        assert_eq!(
            ("web-1", 3u64).encode(),
            (String::from("web-1"), 3u64).encode()
        );
    }

    #[test]
    fn bytes_that_are_no_key_are_refused() {
        assert_eq!(u64::decode(&[1, 2, 3]), None);
        assert_eq!(String::decode(b"open"), None);
        assert_eq!(String::decode(b"a\0\0trailing"), None);
        assert_eq!(String::decode(&[0xC3, 0, 0]), None);
    }
}
