//! Byte mutations in the spirit of libFuzzer's (bit flips, interesting values, truncation,
//! deletion, duplication, dictionary tokens, crossover), plus two that know the formats opampd
//! reads: protobuf length prefixes and decimal numbers in text are rewritten to lie.

/// splitmix64: a seeded, portable generator, so a run is repeatable from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// An index in `0..=len` (a place to insert or cut).
    fn cut(&mut self, len: usize) -> usize {
        self.below(len as u64 + 1) as usize
    }
}

const INTERESTING_BYTES: [u8; 10] = [0x00, 0x01, 0x07, 0x08, 0x10, 0x7f, 0x80, 0xfe, 0xff, b'0'];
const INTERESTING_INTS: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];
/// Numbers that overflow, underflow or mean something odd to a JSON or YAML reader.
const INTERESTING_NUMBERS: [&str; 10] = [
    "0",
    "-1",
    "-0",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "1e309",
    "-1e-400",
    "0.30000000000000004",
    "99999999999999999999999999999999",
];

/// `base` with one to four stacked mutations, cut to `max_len`. `pool` supplies crossover
/// partners, `dictionary` tokens to insert.
pub fn mutate(
    rng: &mut Rng,
    base: &[u8],
    pool: &[Vec<u8>],
    dictionary: &[&[u8]],
    max_len: usize,
) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..=rng.below(4) {
        mutate_once(rng, &mut out, pool, dictionary);
    }
    out.truncate(max_len);
    out
}

fn mutate_once(rng: &mut Rng, buf: &mut Vec<u8>, pool: &[Vec<u8>], dictionary: &[&[u8]]) {
    match rng.below(13) {
        // flip one bit
        0 if !buf.is_empty() => {
            let at = rng.index(buf.len());
            buf[at] ^= 1 << rng.below(8);
        }
        // overwrite a byte with a boundary value
        1 if !buf.is_empty() => {
            let at = rng.index(buf.len());
            buf[at] = INTERESTING_BYTES[rng.index(INTERESTING_BYTES.len())];
        }
        // add or subtract a little
        2 if !buf.is_empty() => {
            let at = rng.index(buf.len());
            let delta = rng.below(35) as u8;
            buf[at] = if rng.below(2) == 0 {
                buf[at].wrapping_add(delta)
            } else {
                buf[at].wrapping_sub(delta)
            };
        }
        // overwrite 2, 4 or 8 bytes with a boundary integer, either endianness
        3 => {
            let width = [2usize, 4, 8][rng.index(3)];
            if buf.len() >= width {
                let at = rng.index(buf.len() - width + 1);
                let value = INTERESTING_INTS[rng.index(INTERESTING_INTS.len())];
                let bytes =
                    if rng.below(2) == 0 { value.to_le_bytes() } else { value.to_be_bytes() };
                let bytes = if rng.below(2) == 0 { &bytes[..width] } else { &bytes[8 - width..] };
                buf[at..at + width].copy_from_slice(bytes);
            }
        }
        // truncate
        4 => {
            let at = rng.cut(buf.len());
            buf.truncate(at);
        }
        // delete a range
        5 if !buf.is_empty() => {
            let start = rng.index(buf.len());
            let end = (start + 1 + rng.index(16)).min(buf.len());
            buf.drain(start..end);
        }
        // duplicate a range in place (repeated fields, doubled keys)
        6 if !buf.is_empty() => {
            let start = rng.index(buf.len());
            let end = (start + 1 + rng.index(64)).min(buf.len());
            let chunk = buf[start..end].to_vec();
            let at = rng.cut(buf.len());
            buf.splice(at..at, chunk);
        }
        // insert random bytes
        7 => {
            let n = 1 + rng.index(16);
            let junk = rng.bytes(n);
            let at = rng.cut(buf.len());
            buf.splice(at..at, junk);
        }
        // insert or overwrite with a dictionary token
        8 if !dictionary.is_empty() => {
            let word = dictionary[rng.index(dictionary.len())];
            let at = rng.cut(buf.len());
            if rng.below(2) == 0 || at + word.len() > buf.len() {
                buf.splice(at..at, word.iter().copied());
            } else {
                buf[at..at + word.len()].copy_from_slice(word);
            }
        }
        // crossover: our head, another input's tail
        9 if !pool.is_empty() => {
            let other = &pool[rng.index(pool.len())];
            let head = rng.cut(buf.len());
            let tail = rng.cut(other.len());
            buf.truncate(head);
            buf.extend_from_slice(&other[tail..]);
        }
        // a protobuf length prefix that lies
        10 => inflate_length(rng, buf),
        // a decimal number that overflows
        11 => inflate_number(rng, buf),
        // swap two bytes
        _ if buf.len() >= 2 => {
            let (a, b) = (rng.index(buf.len()), rng.index(buf.len()));
            buf.swap(a, b);
        }
        _ => {}
    }
}

/// One length-delimited protobuf field: where its length varint is and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthField {
    /// Offset of the length varint.
    pub start: usize,
    /// Offset just past the length varint (where the payload starts).
    pub end: usize,
    pub len: u64,
}

/// The length prefixes of `buf` read as a protobuf message, nested ones included (a payload
/// that parses as a message is walked too; strings that happen to parse give harmless extras).
pub fn protobuf_length_fields(buf: &[u8]) -> Vec<LengthField> {
    let mut out = Vec::new();
    walk(buf, 0, 0, &mut out);
    out
}

fn walk(buf: &[u8], offset: usize, depth: usize, out: &mut Vec<LengthField>) {
    let mut pos = 0;
    while pos < buf.len() {
        let Some((key, after_key)) = read_varint(buf, pos) else { return };
        pos = after_key;
        match key & 7 {
            0 => match read_varint(buf, pos) {
                Some((_, next)) => pos = next,
                None => return,
            },
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let Some((len, end)) = read_varint(buf, pos) else { return };
                let Some(payload_end) = usize::try_from(len).ok().and_then(|l| end.checked_add(l))
                else {
                    return;
                };
                if payload_end > buf.len() {
                    return;
                }
                out.push(LengthField { start: offset + pos, end: offset + end, len });
                if depth < 8 {
                    walk(&buf[end..payload_end], offset + end, depth + 1, out);
                }
                pos = payload_end;
            }
            _ => return,
        }
    }
}

fn read_varint(buf: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(pos)?;
        pos += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Some((value, pos));
        }
    }
    None
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

/// Rewrites one length prefix (or, in a buffer without any, puts a varint anywhere): one more or
/// fewer than the payload, zero, huge, a 10-byte `u64::MAX`, or an over-long encoding.
fn inflate_length(rng: &mut Rng, buf: &mut Vec<u8>) {
    let fields = protobuf_length_fields(buf);
    let (start, end, len) = if fields.is_empty() {
        let at = rng.cut(buf.len());
        (at, at, rng.below(256))
    } else {
        let f = fields[rng.index(fields.len())];
        (f.start, f.end, f.len)
    };
    let encoded = match rng.below(8) {
        0 => varint(len + 1 + rng.below(16)),
        1 => varint(len.saturating_sub(1 + rng.below(4))),
        2 => varint(0),
        3 => varint(0x7fff_ffff),
        4 => varint(1 << 62),
        5 => varint(u64::MAX),
        // the same length, encoded over-long (valid protobuf, unusual)
        6 => {
            let mut v = varint(len);
            let last = v.len() - 1;
            v[last] |= 0x80;
            v.push(0);
            v
        }
        // eleven continuation bytes: no valid varint at all
        _ => vec![0xff; 11],
    };
    buf.splice(start..end, encoded);
}

/// Replaces a run of ASCII digits (a JSON number, a YAML scalar, a date field) with a number
/// that overflows or means something odd.
fn inflate_number(rng: &mut Rng, buf: &mut Vec<u8>) {
    let digits: Vec<usize> = (0..buf.len()).filter(|&i| buf[i].is_ascii_digit()).collect();
    let number = INTERESTING_NUMBERS[rng.index(INTERESTING_NUMBERS.len())].as_bytes();
    if digits.is_empty() {
        let at = rng.cut(buf.len());
        buf.splice(at..at, number.iter().copied());
        return;
    }
    let start = digits[rng.index(digits.len())];
    let end = (start..buf.len()).find(|&i| !buf[i].is_ascii_digit()).unwrap_or(buf.len());
    buf.splice(start..end, number.iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_fields_are_found_nested() {
        // field 3 (len 4) holding field 1 (len 2) "hi"
        let buf = [0x1a, 0x04, 0x0a, 0x02, b'h', b'i'];
        let fields = protobuf_length_fields(&buf);
        assert_eq!(
            fields,
            [LengthField { start: 1, end: 2, len: 4 }, LengthField { start: 3, end: 4, len: 2 }]
        );
    }

    #[test]
    fn mutations_respect_the_length_cap_and_the_seed() {
        let base = b"{\"sequence_num\": 17, \"type\": \"OPAMP\"}".to_vec();
        let pool = vec![base.clone()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200).map(|_| mutate(&mut rng, &base, &pool, &[b"null"], 40)).collect::<Vec<_>>()
        };
        let first = run(7);
        assert!(first.iter().all(|m| m.len() <= 40));
        assert!(first.iter().any(|m| m != &base));
        assert_eq!(first, run(7), "a seed replays the same mutations");
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(read_varint(&varint(v), 0), Some((v, varint(v).len())));
        }
    }
}
