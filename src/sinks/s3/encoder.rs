//! Object compression, one member at a time. An object is a sequence of
//! independently compressed members (gzip members, zstd frames), which the
//! formats define as one stream: `gzip -d`, `zstd -d`, Go's and Python's
//! readers and Hadoop's codecs read it whole. Members compress in parallel
//! on the blocking pool, so one object's compression uses every core.

use std::io::Write;

use super::config::S3Compression;

/// Raw NDJSON per member: large enough that the per-member overhead (18
/// bytes of gzip header and trailer, a fresh zstd window) is noise, small
/// enough that several members keep the cores busy.
pub const MEMBER_BYTES: usize = 1 << 20;

/// Compresses `data` as one complete member.
pub fn compress_member(compression: S3Compression, level: u32, data: &[u8]) -> std::io::Result<Vec<u8>> {
    compress_member_into(compression, level, data, Vec::with_capacity(data.len() / 4 + 64))
}

/// Compresses `data` as one complete member, appended to `out` (a buffer
/// the caller reuses, so members do not allocate afresh).
pub fn compress_member_into(compression: S3Compression, level: u32, data: &[u8], mut out: Vec<u8>) -> std::io::Result<Vec<u8>> {
    match compression {
        S3Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
            e.write_all(data)?;
            e.finish()
        }
        S3Compression::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(out, level as i32)?;
            e.write_all(data)?;
            e.finish()
        }
        S3Compression::None => {
            out.extend_from_slice(data);
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn round_trip(c: S3Compression) {
        let level = if c == S3Compression::Zstd { 3 } else { 6 };
        let mut out = Vec::new();
        let mut want = Vec::new();
        let mut member = Vec::new();
        for i in 0..20_000 {
            let line = format!("{{\"i\":{i},\"msg\":\"event number {i}\"}}\n");
            want.extend_from_slice(line.as_bytes());
            member.extend_from_slice(line.as_bytes());
            if member.len() > 100_000 {
                out.extend(compress_member(c, level, &member).unwrap());
                member.clear();
            }
        }
        out.extend(compress_member(c, level, &member).unwrap());
        let mut got = Vec::new();
        match c {
            S3Compression::Gzip => {
                flate2::read::MultiGzDecoder::new(&out[..]).read_to_end(&mut got).unwrap();
            }
            S3Compression::Zstd => got = zstd::stream::decode_all(&out[..]).unwrap(),
            S3Compression::None => got = out,
        }
        assert_eq!(got, want);
    }

    #[test]
    fn concatenated_members_decode_as_one_stream() {
        round_trip(S3Compression::Gzip);
        round_trip(S3Compression::Zstd);
        round_trip(S3Compression::None);
    }
}
