//! A deterministic in-process corpus of the same shape as
//! `scripts/gen-corpus`: ~285-byte JSON app-log lines.

/// `n` newline-terminated lines, the same for the same seed.
pub fn ndjson(n: usize, seed: u64) -> Vec<u8> {
    const SERVICES: [&str; 8] = ["checkout", "cart", "search", "payments", "auth", "catalog", "shipping", "profile"];
    const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
    const MSGS: [&str; 3] = ["request completed", "upstream slow", "cache miss"];
    const STATUS: [u32; 8] = [200, 200, 200, 201, 404, 429, 500, 503];
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(n * 290);
    for i in 0..n {
        let status = STATUS[(next() % 8) as usize];
        let level = if status >= 500 {
            "error"
        } else if status >= 400 {
            "warn"
        } else {
            "info"
        };
        let line = format!(
            concat!(
                r#"{{"time":"2026-11-01T00:{:02}:{:02}.{:06}Z","level":"{}","msg":"{}","service":"{}","method":"{}","#,
                r#""path":"/api/v1/orders/{}","status":{},"duration_ms":{}.{:03},"request_id":"{:016x}{:016x}","#,
                r#""user_id":"u-{:06}","http":{{"proto":"HTTP/1.1","bytes":{}}}}}"#,
                "\n"
            ),
            (i / 60_000_000) % 60,
            (i / 1_000_000) % 60,
            i % 1_000_000,
            level,
            MSGS[(next() % 3) as usize],
            SERVICES[(next() % 8) as usize],
            METHODS[(next() % 4) as usize],
            next() % 100_000,
            status,
            next() % 900,
            next() % 1000,
            next(),
            next(),
            next() % 1_000_000,
            100 + next() % 50_000,
        );
        out.extend_from_slice(line.as_bytes());
    }
    out
}
