//! LIST with RFC 5258 selection and return options, which imap-codec does not parse: the
//! subset clients use (RFC 6154 §5.1 `LIST (SPECIAL-USE) "" "*"`, `RETURN (SUBSCRIBED)`)
//! is taken off the command line before parsing, and the rest parsed as a plain LIST.

/// RFC 5258 options of one LIST command (the subset we serve).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// Selection `SPECIAL-USE` (RFC 6154 §5.1): only special-use mailboxes.
    pub special_use_only: bool,
    /// Selection or return `SUBSCRIBED`: add \Subscribed; as selection, only those.
    pub subscribed_only: bool,
    pub return_subscribed: bool,
}

/// `tag LIST (opts) ref pat [RETURN (opts)]` → (`tag LIST ref pat`, options). None when the
/// command is not a LIST with options (or carries literals: left to the parser).
pub fn split_list_options(raw: &[u8]) -> Option<(Vec<u8>, ListOptions)> {
    let line = std::str::from_utf8(raw).ok()?;
    let line = line.strip_suffix("\r\n")?;
    if line.contains('\n') || line.ends_with('}') {
        return None;
    }
    let (tag, rest) = line.split_once(' ')?;
    let (cmd, mut args) = rest.split_once(' ')?;
    if !cmd.eq_ignore_ascii_case("LIST") {
        return None;
    }
    let mut opts = ListOptions::default();
    let mut changed = false;
    if let Some(inner) = args.strip_prefix('(') {
        let (sel, after) = inner.split_once(')')?;
        for o in sel.split_whitespace() {
            match o.to_ascii_uppercase().as_str() {
                "SPECIAL-USE" => opts.special_use_only = true,
                "SUBSCRIBED" => {
                    opts.subscribed_only = true;
                    opts.return_subscribed = true;
                }
                "RECURSIVEMATCH" | "REMOTE" => {}
                _ => return None,
            }
        }
        args = after.trim_start();
        changed = true;
    }
    let upper = args.to_ascii_uppercase();
    if let Some(i) = upper.rfind(" RETURN (") {
        let ret = args[i + " RETURN (".len()..].strip_suffix(')')?;
        for o in ret.split_whitespace() {
            match o.to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => opts.return_subscribed = true,
                // Always returned: \HasChildren/\HasNoChildren and special-use attributes.
                "CHILDREN" | "SPECIAL-USE" => {}
                _ => return None,
            }
        }
        args = &args[..i];
        changed = true;
    }
    changed.then(|| (format!("{tag} LIST {args}\r\n").into_bytes(), opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_split_off() {
        let (plain, o) = split_list_options(b"a LIST (SPECIAL-USE) \"\" \"*\"\r\n").unwrap();
        assert_eq!(plain, b"a LIST \"\" \"*\"\r\n");
        assert!(o.special_use_only);
        let (plain, o) = split_list_options(b"b list \"\" \"%\" RETURN (CHILDREN SUBSCRIBED)\r\n").unwrap();
        assert_eq!(plain, b"b LIST \"\" \"%\"\r\n");
        assert!(o.return_subscribed && !o.subscribed_only);
        assert!(split_list_options(b"c LIST \"\" \"*\"\r\n").is_none());
        assert!(split_list_options(b"d LIST \"\" \"*\" RETURN (STATUS (MESSAGES))\r\n").is_none());
    }
}
