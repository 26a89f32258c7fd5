//! Reading one protocol line with a length limit (SMTP and POP3 commands, SMTP DATA lines).

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Read through the next LF into `line`, keeping at most `limit` bytes. Returns false if the
/// line was longer (the rest is consumed and dropped). An empty `line` means EOF. Shared by
/// the SMTP and POP3 sessions.
pub async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<bool> {
    let mut complete = true;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(complete);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if complete && line.len() + n <= limit {
            line.extend_from_slice(chunk);
        } else {
            if complete && line.is_empty() {
                // Keep the first byte so the caller can tell EOF from an overlong line.
                line.push(chunk[0]);
            }
            complete = false;
        }
        reader.consume(n);
        if done {
            return Ok(complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], limit: usize) -> Vec<(Vec<u8>, bool)> {
        let mut r = tokio::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let ok = read_line_limited(&mut r, &mut line, limit).await.unwrap();
            if line.is_empty() {
                return out;
            }
            out.push((line, ok));
        }
    }

    #[tokio::test]
    async fn lines_within_and_over_the_limit_across_buffer_refills() {
        let got = lines(b"ab\r\nabcdefgh\r\nxy", 6).await;
        assert_eq!(
            got,
            [
                (b"ab\r\n".to_vec(), true),
                // Over the limit: false; what was kept is not to be used.
                (b"abcd".to_vec(), false),
                // The last line has no LF: returned as it is (the caller sees no LF).
                (b"xy".to_vec(), true),
            ]
        );
        // Over the limit in the first piece: one byte kept, so it does not look like EOF.
        assert_eq!(lines(b"abcdef\n", 2).await, [(b"a".to_vec(), false)]);
    }
}
