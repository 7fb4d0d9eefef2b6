//! Object compression, one member at a time. An object is a sequence of
//! independently compressed members (gzip members, zstd frames), which the
//! formats define as one stream: `gzip -d`, `zstd -d`, Go's and Python's
//! readers and Hadoop's codecs read it whole. Members compress in parallel
//! on the blocking pool, so one object's compression uses every core.

use super::config::S3Compression;

/// Raw NDJSON per member: large enough that the per-member overhead (18
/// bytes of gzip header and trailer, a fresh zstd window) is noise, small
/// enough that several members keep the cores busy.
pub const MEMBER_BYTES: usize = 1 << 20;

/// The 10-byte gzip member header: deflate, no name or time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Compresses members one after the other, keeping its context (zstd's
/// tables, deflate's window and hash chains) from one member to the next
/// instead of allocating them afresh.
pub struct MemberCompressor {
    kind: Kind,
}

enum Kind {
    /// Raw deflate; the gzip header and trailer are written around it.
    Gzip(Box<flate2::Compress>),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    None,
}

impl MemberCompressor {
    /// A compressor for `compression` at `level`.
    pub fn new(compression: S3Compression, level: u32) -> std::io::Result<MemberCompressor> {
        let kind = match compression {
            S3Compression::Gzip => Kind::Gzip(Box::new(flate2::Compress::new(flate2::Compression::new(level), false))),
            S3Compression::Zstd => Kind::Zstd(Box::new(zstd::bulk::Compressor::new(level as i32)?)),
            S3Compression::None => Kind::None,
        };
        Ok(MemberCompressor { kind })
    }

    /// Replaces the content of `out` with `data` compressed as one complete
    /// member (a gzip member with its CRC, a zstd frame).
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        out.clear();
        match &mut self.kind {
            Kind::Gzip(deflate) => {
                deflate.reset();
                out.extend_from_slice(&GZIP_HEADER);
                loop {
                    out.reserve(data.len() / 4 + 4096);
                    let before = (deflate.total_in(), deflate.total_out());
                    let consumed = before.0 as usize;
                    let status = deflate
                        .compress_vec(&data[consumed..], out, flate2::FlushCompress::Finish)
                        .map_err(std::io::Error::other)?;
                    if status == flate2::Status::StreamEnd {
                        break;
                    }
                    if (deflate.total_in(), deflate.total_out()) == before && out.len() < out.capacity() {
                        return Err(std::io::Error::other("deflate made no progress"));
                    }
                }
                let mut crc = flate2::Crc::new();
                crc.update(data);
                out.extend_from_slice(&crc.sum().to_le_bytes());
                // ISIZE is the length modulo 2^32 by definition.
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            }
            Kind::Zstd(z) => {
                out.reserve(zstd::zstd_safe::compress_bound(data.len()));
                z.compress_to_buffer(data, out)?;
            }
            Kind::None => out.extend_from_slice(data),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn round_trip(c: S3Compression) {
        let level = if c == S3Compression::Zstd { 3 } else { 6 };
        let mut compressor = MemberCompressor::new(c, level).unwrap();
        let mut out = Vec::new();
        let mut want = Vec::new();
        let mut member = Vec::new();
        let mut buf = Vec::new();
        for i in 0..20_000 {
            let line = format!("{{\"i\":{i},\"msg\":\"event number {i}\"}}\n");
            want.extend_from_slice(line.as_bytes());
            member.extend_from_slice(line.as_bytes());
            if member.len() > 100_000 {
                compressor.compress(&member, &mut buf).unwrap();
                out.extend_from_slice(&buf);
                member.clear();
            }
        }
        compressor.compress(&member, &mut buf).unwrap();
        out.extend_from_slice(&buf);
        // An empty member is valid too.
        let mut empty = Vec::new();
        MemberCompressor::new(c, level).unwrap().compress(b"", &mut empty).unwrap();
        out.extend(empty);
        let mut got = Vec::new();
        match c {
            S3Compression::Gzip => {
                flate2::read::MultiGzDecoder::new(&out[..]).read_to_end(&mut got).unwrap();
                // The system's gzip agrees (header, CRC and size fields).
                let mut child = std::process::Command::new("gzip")
                    .args(["-dc"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdin = child.stdin.take().unwrap();
                let data = out.clone();
                let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
                let output = child.wait_with_output().unwrap();
                writer.join().unwrap().unwrap();
                assert!(output.status.success());
                assert_eq!(output.stdout, want);
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
