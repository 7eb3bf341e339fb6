//! Splitting a query string into statements, and recognising the session
//! commands that drivers send (transaction control, SET/SHOW/RESET, DISCARD,
//! DEALLOCATE) so they never reach the SQL planner.

/// A command the session answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    Begin,
    Commit,
    Rollback,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// `SET name = value`; `None` means `DEFAULT`.
    Set {
        name: String,
        value: Option<String>,
    },
    /// `SET TRANSACTION ...` and `SET SESSION CHARACTERISTICS ...`: accepted,
    /// nothing to change while every statement commits on its own.
    SetTransaction,
    Show(String),
    ShowAll,
    Reset(String),
    ResetAll,
    DiscardAll,
    Deallocate(Option<String>),
    CloseCursor(Option<String>),
    Listen,
    Unlisten,
}

impl SessionCommand {
    /// The CommandComplete tag PostgreSQL sends.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::Begin => "BEGIN",
            Self::Commit => "COMMIT",
            Self::Rollback | Self::RollbackTo(_) => "ROLLBACK",
            Self::Savepoint(_) => "SAVEPOINT",
            Self::Release(_) => "RELEASE",
            Self::Set { .. } | Self::SetTransaction => "SET",
            Self::Show(_) | Self::ShowAll => "SHOW",
            Self::Reset(_) | Self::ResetAll => "RESET",
            Self::DiscardAll => "DISCARD ALL",
            Self::Deallocate(None) => "DEALLOCATE ALL",
            Self::Deallocate(Some(_)) => "DEALLOCATE",
            Self::CloseCursor(None) => "CLOSE CURSOR ALL",
            Self::CloseCursor(Some(_)) => "CLOSE CURSOR",
            Self::Listen => "LISTEN",
            Self::Unlisten => "UNLISTEN",
        }
    }
}

/// Splits `sql` at top-level semicolons, honouring quotes, dollar quotes and
/// comments. Empty statements are dropped.
pub fn split(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => i = skip_quoted(bytes, i, b'\'', is_escape_string(bytes, i)),
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            b'$' => i = skip_dollar_quoted(bytes, i),
            b';' => {
                push_nonempty(&mut out, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push_nonempty(&mut out, &sql[start..]);
    out
}

fn push_nonempty<'a>(out: &mut Vec<&'a str>, stmt: &'a str) {
    if !strip_comments(stmt).trim().is_empty() {
        out.push(stmt.trim());
    }
}

fn is_escape_string(bytes: &[u8], quote: usize) -> bool {
    quote > 0
        && matches!(bytes[quote - 1], b'e' | b'E')
        && (quote == 1 || !bytes[quote - 2].is_ascii_alphanumeric() && bytes[quote - 2] != b'_')
}

/// Returns the index just past the closing quote (or the end of input).
fn skip_quoted(bytes: &[u8], open: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        if backslash_escapes && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

fn skip_block_comment(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i + 1 < bytes.len() {
        if bytes[i] == b'/' && bytes[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

fn skip_dollar_quoted(bytes: &[u8], open: usize) -> usize {
    // $tag$ ... $tag$, where tag is empty or an identifier; `$1` is a parameter.
    let mut j = open + 1;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
        j += 1;
    }
    if j >= bytes.len()
        || bytes[j] != b'$'
        || bytes[open + 1..j].first().is_some_and(u8::is_ascii_digit)
    {
        return open + 1;
    }
    let tag = &bytes[open..=j];
    let mut i = j + 1;
    while i + tag.len() <= bytes.len() {
        if &bytes[i..i + tag.len()] == tag {
            return i + tag.len();
        }
        i += 1;
    }
    bytes.len()
}

fn strip_comments(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    let mut last = 0;
    while i < bytes.len() {
        if bytes[i] == b'-' && bytes.get(i + 1) == Some(&b'-') {
            out.push_str(&sql[last..i]);
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            last = i;
        } else if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            out.push_str(&sql[last..i]);
            i = skip_block_comment(bytes, i);
            last = i;
        } else if bytes[i] == b'\'' || bytes[i] == b'"' {
            i = skip_quoted(bytes, i, bytes[i], false);
        } else {
            i += 1;
        }
    }
    out.push_str(&sql[last.min(sql.len())..]);
    out
}

/// Words of a session command: identifiers and literals, with `=` and `,`
/// as separators. Quotes are removed from literals.
fn words(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == ',' || c == '=' {
            chars.next();
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut w = String::new();
            while let Some(ch) = chars.next() {
                if ch == c {
                    if chars.peek() == Some(&c) {
                        chars.next();
                        w.push(c);
                        continue;
                    }
                    break;
                }
                w.push(ch);
            }
            out.push(w);
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == ',' || ch == '=' || ch == '\'' {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            out.push(w);
        }
    }
    out
}

/// Recognises a session command, or returns `None` for SQL the planner runs.
pub fn session_command(stmt: &str) -> Option<SessionCommand> {
    let text = strip_comments(stmt);
    let w = words(text.trim());
    let upper: Vec<String> = w.iter().map(|s| s.to_ascii_uppercase()).collect();
    let u: Vec<&str> = upper.iter().map(String::as_str).collect();
    let name_after = |i: usize| w.get(i).cloned().unwrap_or_default();
    let skip_work = |i: usize| match u.get(i) {
        Some(&"WORK") | Some(&"TRANSACTION") => i + 1,
        _ => i,
    };
    Some(match u.as_slice() {
        ["BEGIN", ..] => SessionCommand::Begin,
        ["START", "TRANSACTION", ..] => SessionCommand::Begin,
        ["COMMIT", ..] | ["END", ..] => SessionCommand::Commit,
        ["ROLLBACK", ..] | ["ABORT", ..] => {
            let i = skip_work(1);
            if u.get(i) == Some(&"TO") {
                let i = if u.get(i + 1) == Some(&"SAVEPOINT") {
                    i + 2
                } else {
                    i + 1
                };
                SessionCommand::RollbackTo(name_after(i))
            } else {
                SessionCommand::Rollback
            }
        }
        ["SAVEPOINT", ..] => SessionCommand::Savepoint(name_after(1)),
        ["RELEASE", "SAVEPOINT", ..] => SessionCommand::Release(name_after(2)),
        ["RELEASE", ..] => SessionCommand::Release(name_after(1)),
        ["SET", rest @ ..] => {
            let (rest, offset) = match rest.first() {
                Some(&"SESSION") if rest.get(1) != Some(&"CHARACTERISTICS") => (&rest[1..], 2),
                Some(&"LOCAL") => (&rest[1..], 2),
                _ => (rest, 1),
            };
            match rest {
                ["TRANSACTION", ..] | ["SESSION", "CHARACTERISTICS", ..] => {
                    SessionCommand::SetTransaction
                }
                ["TIME", "ZONE", ..] => {
                    let v = w.get(offset + 2).cloned();
                    let value = match v.as_deref().map(str::to_ascii_uppercase).as_deref() {
                        Some("DEFAULT") | Some("LOCAL") | None => None,
                        _ => v,
                    };
                    SessionCommand::Set {
                        name: "timezone".into(),
                        value,
                    }
                }
                ["NAMES", ..] => SessionCommand::Set {
                    name: "client_encoding".into(),
                    value: w.get(offset + 1).cloned(),
                },
                [_, ..] => {
                    let name = w[offset].clone();
                    let mut values: Vec<&str> =
                        w[offset + 1..].iter().map(String::as_str).collect();
                    if values.first().is_some_and(|v| v.eq_ignore_ascii_case("TO")) {
                        values.remove(0);
                    }
                    let value = if values.len() == 1 && values[0].eq_ignore_ascii_case("DEFAULT") {
                        None
                    } else {
                        Some(values.join(", "))
                    };
                    SessionCommand::Set { name, value }
                }
                [] => return None,
            }
        }
        ["SHOW", "ALL"] => SessionCommand::ShowAll,
        ["SHOW", ..] if w.len() > 1 => SessionCommand::Show(w[1..].join(" ")),
        ["RESET", "ALL"] => SessionCommand::ResetAll,
        ["RESET", ..] if w.len() > 1 => SessionCommand::Reset(w[1..].join(" ")),
        ["DISCARD", ..] => SessionCommand::DiscardAll,
        ["DEALLOCATE", "PREPARE", "ALL"] | ["DEALLOCATE", "ALL"] => {
            SessionCommand::Deallocate(None)
        }
        ["DEALLOCATE", "PREPARE", ..] => SessionCommand::Deallocate(Some(name_after(2))),
        ["DEALLOCATE", ..] => SessionCommand::Deallocate(Some(name_after(1))),
        ["CLOSE", "ALL"] => SessionCommand::CloseCursor(None),
        ["CLOSE", ..] => SessionCommand::CloseCursor(Some(name_after(1))),
        ["LISTEN", ..] => SessionCommand::Listen,
        ["UNLISTEN", ..] => SessionCommand::Unlisten,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_quotes_comments_and_dollar_quotes() {
        let sql = "SELECT ';' AS a; -- x; y\nSELECT $$a;b$$; SELECT \"x;y\" FROM t /* ; */;;  ";
        assert_eq!(
            split(sql),
            vec![
                "SELECT ';' AS a",
                "-- x; y\nSELECT $$a;b$$",
                "SELECT \"x;y\" FROM t /* ; */"
            ]
        );
        assert_eq!(
            split("SELECT E'it\\'s;'; SELECT 2"),
            vec!["SELECT E'it\\'s;'", "SELECT 2"]
        );
        assert_eq!(split("SELECT $1; SELECT 2"), vec!["SELECT $1", "SELECT 2"]);
        assert!(split(" ; -- only a comment\n").is_empty());
    }

    #[test]
    fn recognises_driver_session_commands() {
        use SessionCommand::*;
        let set = |n: &str, v: Option<&str>| Set {
            name: n.into(),
            value: v.map(Into::into),
        };
        let cases = [
            ("BEGIN", Begin),
            ("begin isolation level serializable", Begin),
            ("START TRANSACTION", Begin),
            ("COMMIT", Commit),
            ("END TRANSACTION", Commit),
            ("ROLLBACK", Rollback),
            ("ABORT", Rollback),
            ("ROLLBACK TO SAVEPOINT sp1", RollbackTo("sp1".into())),
            ("SAVEPOINT sp1", Savepoint("sp1".into())),
            ("RELEASE SAVEPOINT sp1", Release("sp1".into())),
            (
                "SET extra_float_digits = 3",
                set("extra_float_digits", Some("3")),
            ),
            (
                "SET application_name = 'jdbc'",
                set("application_name", Some("jdbc")),
            ),
            (
                "set search_path = \"public\"",
                set("search_path", Some("public")),
            ),
            ("SET search_path TO a, b", set("search_path", Some("a, b"))),
            ("SET DateStyle = 'ISO'", set("DateStyle", Some("ISO"))),
            ("SET TIME ZONE 'UTC'", set("timezone", Some("UTC"))),
            ("SET SESSION TimeZone TO DEFAULT", set("TimeZone", None)),
            (
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
                SetTransaction,
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                SetTransaction,
            ),
            (
                "show transaction isolation level",
                Show("transaction isolation level".into()),
            ),
            (
                "SHOW standard_conforming_strings",
                Show("standard_conforming_strings".into()),
            ),
            ("SHOW ALL", ShowAll),
            ("RESET ALL", ResetAll),
            ("RESET search_path", Reset("search_path".into())),
            ("DISCARD ALL", DiscardAll),
            ("DEALLOCATE ALL", Deallocate(None)),
            ("DEALLOCATE PREPARE s1", Deallocate(Some("s1".into()))),
            ("CLOSE ALL", CloseCursor(None)),
            ("UNLISTEN *", Unlisten),
        ];
        for (sql, expected) in cases {
            assert_eq!(session_command(sql), Some(expected), "{sql}");
        }
        assert_eq!(session_command("SELECT 1"), None);
        assert_eq!(session_command("INSERT INTO t VALUES (1)"), None);
    }
}
