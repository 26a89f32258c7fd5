//! Small helpers on raw RFC 5322 messages: find the header block and single header values
//! without parsing the whole message (the MX path must stay cheap).

/// The header section, up to and excluding the empty line that ends it (RFC 5322 §2.1).
pub fn header_block(msg: &[u8]) -> &[u8] {
    if msg.starts_with(b"\r\n") || msg.starts_with(b"\n") {
        return &msg[..0];
    }
    let mut i = 0;
    while let Some(pos) = msg[i..].iter().position(|&b| b == b'\n') {
        let next = i + pos + 1;
        match msg.get(next) {
            Some(b'\r') if msg.get(next + 1) == Some(&b'\n') => return &msg[..next],
            Some(b'\n') => return &msg[..next],
            None => return msg,
            _ => i = next,
        }
    }
    msg
}

/// The unfolded value of the first header called `name` (case-insensitive), trimmed.
pub fn header_value(msg: &[u8], name: &str) -> Option<String> {
    let block = header_block(msg);
    let mut lines = block.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if !line[..colon].trim_ascii_end().eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
        // RFC 5322 §2.2.3: a header continues on lines that start with white space.
        while let Some(next) = lines.peek() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                let next = lines.next().unwrap();
                value.push_str(&String::from_utf8_lossy(next.strip_suffix(b"\r").unwrap_or(next)));
            } else {
                break;
            }
        }
        return Some(value.trim().to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_folded_headers() {
        let m = b"Subject: hi\r\nMessage-ID:\r\n <abc@x.test>\r\nfrom: A <a@x.test>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(header_value(m, "message-id").as_deref(), Some("<abc@x.test>"));
        assert_eq!(header_value(m, "From").as_deref(), Some("A <a@x.test>"));
        assert_eq!(header_value(m, "Date"), None);
        assert_eq!(header_block(m).len(), m.len() - b"\r\nMessage-ID: <body@x>\r\n".len());
    }

    #[test]
    fn headerless_message() {
        assert_eq!(header_block(b"\r\nbody"), b"");
        assert_eq!(header_value(b"\r\nX: y", "X"), None);
    }
}
