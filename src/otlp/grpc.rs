//! gRPC's length-prefixed messages: one byte that says whether the message
//! is compressed, four bytes of big-endian length, then the message.

use std::borrow::Cow;
use std::io::Read as _;

/// gRPC status codes sluice answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    InvalidArgument = 3,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Unavailable = 14,
}

impl Code {
    /// The code of a `grpc-status` header value.
    pub(crate) fn of(value: &str) -> Option<i32> {
        value.trim().parse().ok()
    }
}

/// Why a gRPC message could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum FrameError {
    /// Fewer bytes than the prefix or the length says.
    #[error("the message is cut short")]
    Short,
    /// More than one message in a unary call.
    #[error("more than one message in the request")]
    Trailing,
    /// Compressed, but not with gzip (the only encoding sluice takes).
    #[error("compressed with {0:?}; only gzip is accepted")]
    Encoding(String),
    /// The message is over the limit.
    #[error("the message is over {0} bytes")]
    TooLarge(usize),
    /// Gzip that does not inflate.
    #[error("bad gzip: {0}")]
    Gzip(String),
}

/// Frames one message, uncompressed.
pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Frames one message, gzip-compressed (`grpc-encoding: gzip`).
pub(crate) fn frame_gzip(message: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(vec![0; 5], flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_all(&mut gz, message);
    let mut out = gz.finish().unwrap_or_default();
    let len = (out.len() - 5) as u32;
    out[0] = 1;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

/// The one message of a unary call's body, inflated when its flag says
/// compressed (with `encoding`, the `grpc-encoding` header). At most
/// `limit` bytes, before and after inflating. An uncompressed message is
/// the body's own bytes, not a copy.
pub(crate) fn unframe<'b>(body: &'b [u8], encoding: Option<&str>, limit: usize) -> Result<Cow<'b, [u8]>, FrameError> {
    if body.len() < 5 {
        return Err(FrameError::Short);
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let rest = &body[5..];
    if rest.len() < len {
        return Err(FrameError::Short);
    }
    if rest.len() > len {
        return Err(FrameError::Trailing);
    }
    if len > limit {
        return Err(FrameError::TooLarge(limit));
    }
    if body[0] == 0 {
        return Ok(Cow::Borrowed(rest));
    }
    match encoding.unwrap_or("identity") {
        "gzip" => gunzip(rest, limit).map(Cow::Owned).map_err(|e| match e {
            GunzipError::TooLarge => FrameError::TooLarge(limit),
            GunzipError::Bad(m) => FrameError::Gzip(m),
        }),
        other => Err(FrameError::Encoding(other.to_owned())),
    }
}

/// Why gzip did not inflate.
#[derive(Debug)]
pub(crate) enum GunzipError {
    /// It inflates to more than the limit.
    TooLarge,
    /// Not gzip, or damaged.
    Bad(String),
}

/// Inflates gzip to at most `limit` bytes (a small body must not inflate
/// into unbounded memory).
pub(crate) fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    let mut d = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    d.read_to_end(&mut out).map_err(|e| GunzipError::Bad(e.to_string()))?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_messages_read_back_plain_or_gzipped() {
        let msg = b"hello otlp".repeat(10);
        assert_eq!(unframe(&frame(&msg), None, 1000).unwrap().as_ref(), msg);
        assert_eq!(unframe(&frame_gzip(&msg), Some("gzip"), 1000).unwrap().as_ref(), msg);
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let msg = frame(b"abc");
        assert_eq!(unframe(&msg[..6], None, 100), Err(FrameError::Short));
        assert_eq!(unframe(&[msg.clone(), vec![0]].concat(), None, 100), Err(FrameError::Trailing));
        assert_eq!(unframe(&msg, None, 2), Err(FrameError::TooLarge(2)));
        assert_eq!(unframe(&frame_gzip(&[0; 1000]), Some("gzip"), 999), Err(FrameError::TooLarge(999)));
        assert!(matches!(
            unframe(&frame_gzip(b"x"), Some("snappy"), 100),
            Err(FrameError::Encoding(_))
        ));
        let mut bad = frame(b"not gzip");
        bad[0] = 1;
        assert!(matches!(unframe(&bad, Some("gzip"), 100), Err(FrameError::Gzip(_))));
    }
}
