//! The protobuf wire format, as far as routing needs it: one field of a
//! gRPC call's first message read straight from the bytes (no descriptors,
//! no allocation but the key), and the varint and frame a gRPC health check
//! sends. Pure: bounded by the body it is given.

/// The key at field numbers (`[1]`, `[2, 1]`) of the first message of a
/// gRPC request body (5-byte frame header, uncompressed). Strings and
/// bytes as they are, integers in decimal; the last occurrence wins, as in
/// protobuf. `None` when absent or malformed.
pub fn protobuf_key(body: &[u8], fields: &[u64]) -> Option<Vec<u8>> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let mut msg = body.get(5..5 + len)?;
    let (last, parents) = fields.split_last()?;
    for f in parents {
        match find(msg, *f)? {
            Value::Len(sub) => msg = sub,
            _ => return None,
        }
    }
    Some(match find(msg, *last)? {
        Value::Len(b) => b.to_vec(),
        Value::Varint(v) => v.to_string().into_bytes(),
        Value::Fixed64(v) => v.to_string().into_bytes(),
        Value::Fixed32(v) => v.to_string().into_bytes(),
    })
}

enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// The last value of field `field` in one message.
fn find(mut b: &[u8], field: u64) -> Option<Value<'_>> {
    let mut found = None;
    while !b.is_empty() {
        let tag = varint(&mut b)?;
        let (num, wire) = (tag >> 3, tag & 7);
        let v = match wire {
            0 => Value::Varint(varint(&mut b)?),
            1 => {
                let (x, rest) = b.split_first_chunk::<8>()?;
                b = rest;
                Value::Fixed64(u64::from_le_bytes(*x))
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                let (x, rest) = (b.get(..n)?, b.get(n..)?);
                b = rest;
                Value::Len(x)
            }
            5 => {
                let (x, rest) = b.split_first_chunk::<4>()?;
                b = rest;
                Value::Fixed32(u32::from_le_bytes(*x))
            }
            _ => return None,
        };
        if num == field {
            found = Some(v);
        }
    }
    found
}

/// Appends `v` as a protobuf varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One gRPC message frame: uncompressed flag, 4-byte length, `msg`.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + msg.len());
    v.push(0);
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut s = b.as_slice();
            assert_eq!(varint(&mut s), Some(v));
            assert!(s.is_empty());
        }
    }

    #[test]
    fn keys_by_field_number() {
        // HelloRequest { name: "Ada" }
        let b = frame(&[0x0a, 3, b'A', b'd', b'a']);
        assert_eq!(protobuf_key(&b, &[1]), Some(b"Ada".to_vec()));
        assert_eq!(protobuf_key(&b, &[2]), None);
        // { 2: 300 (varint), 3: { 1: "x" }, 2: 7 } -> last 2 wins.
        let b = frame(&[0x10, 0xac, 0x02, 0x1a, 3, 0x0a, 1, b'x', 0x10, 7]);
        assert_eq!(protobuf_key(&b, &[2]), Some(b"7".to_vec()));
        assert_eq!(protobuf_key(&b, &[3, 1]), Some(b"x".to_vec()));
        // Malformed: truncated, compressed, not a number path.
        assert_eq!(protobuf_key(&frame(&[0x0a, 9, b'A']), &[1]), None);
        let mut c = frame(&[0x0a, 1, b'A']);
        c[0] = 1;
        assert_eq!(protobuf_key(&c, &[1]), None);
    }
}
