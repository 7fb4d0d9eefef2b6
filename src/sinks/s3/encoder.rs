//! A streaming object compressor whose output can be taken out while it
//! fills: each taken chunk is a multipart part, and the parts concatenate
//! to one valid gzip or zstd stream.

use std::io::Write;

use super::config::S3Compression;

/// Compresses NDJSON into an in-memory buffer.
pub(crate) enum Encoder {
    /// gzip (flate2).
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// Zstandard.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    /// No compression.
    Plain(Vec<u8>),
}

impl Encoder {
    /// A compressor for `compression` at `level`.
    pub(crate) fn new(compression: S3Compression, level: u32) -> std::io::Result<Encoder> {
        Ok(match compression {
            S3Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level))),
            S3Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), level as i32)?),
            S3Compression::None => Encoder::Plain(Vec::new()),
        })
    }

    /// Compresses `data` in.
    pub(crate) fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
            Encoder::Plain(v) => {
                v.extend_from_slice(data);
                Ok(())
            }
        }
    }

    /// Compressed bytes produced and not yet taken.
    pub(crate) fn output_len(&self) -> usize {
        match self {
            Encoder::Gzip(e) => e.get_ref().len(),
            Encoder::Zstd(e) => e.get_ref().len(),
            Encoder::Plain(v) => v.len(),
        }
    }

    /// Takes the compressed bytes produced so far (the stream goes on).
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        match self {
            Encoder::Gzip(e) => std::mem::take(e.get_mut()),
            Encoder::Zstd(e) => std::mem::take(e.get_mut()),
            Encoder::Plain(v) => std::mem::take(v),
        }
    }

    /// Ends the stream; returns the bytes not yet taken.
    pub(crate) fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(v) => Ok(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn round_trip(c: S3Compression) {
        let mut enc = Encoder::new(c, if c == S3Compression::Zstd { 3 } else { 6 }).unwrap();
        let mut out = Vec::new();
        let mut want = Vec::new();
        for i in 0..20_000 {
            let line = format!("{{\"i\":{i},\"msg\":\"event number {i}\"}}\n");
            want.extend_from_slice(line.as_bytes());
            enc.write(line.as_bytes()).unwrap();
            if enc.output_len() > 4096 {
                out.extend(enc.take_output());
            }
        }
        out.extend(enc.finish().unwrap());
        let mut got = Vec::new();
        match c {
            S3Compression::Gzip => {
                flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut got).unwrap();
            }
            S3Compression::Zstd => got = zstd::stream::decode_all(&out[..]).unwrap(),
            S3Compression::None => got = out,
        }
        assert_eq!(got, want);
    }

    #[test]
    fn taken_chunks_concatenate_to_one_stream() {
        round_trip(S3Compression::Gzip);
        round_trip(S3Compression::Zstd);
        round_trip(S3Compression::None);
    }
}
