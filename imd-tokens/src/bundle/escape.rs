//! Quoting and escaping for every syntax a bundle writes a value into.
//!
//! Tokens are restricted to `[A-Za-z0-9_.-]` and server URLs to RFC 3986
//! characters (no `"`, `<`, `>`, `\`, whitespace), so most of these are
//! no-ops on real input. They are still applied everywhere, and tested with
//! hostile values, so that a later relaxation of the validation cannot turn
//! into an injection.

/// Escapes text for XML character data and attribute values (both quote
/// kinds), so the result is safe anywhere in an XML document.
pub fn xml(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The body of a `.reg` string value (without the surrounding quotes):
/// `\` becomes `\\` and `"` becomes `\"`.
pub fn reg(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// An msiexec public-property value, quoted: `"…"` with every embedded `"`
/// doubled, as the Windows Installer command line requires.
pub fn msi_value(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// Text placed on a line of a `.cmd` batch file: `%` becomes `%%` so that
/// cmd.exe does not expand it as a variable. (The script disables delayed
/// expansion, so `!` needs nothing; the other metacharacters are inert
/// inside the double quotes every value is wrapped in.)
pub fn cmd(value: &str) -> String {
    value.replace('%', "%%")
}

/// A PowerShell single-quoted string literal: no variable or subexpression
/// expansion happens inside `'…'`, and the only escape is `''` for `'`.
/// PowerShell also treats the typographic quotes U+2018..U+201B as single
/// quotes, so those are doubled too.
pub fn ps_single(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NASTY: &str = r#"a"b\c%d&e<f'g>h"#;

    #[test]
    fn xml_escapes_all_five() {
        assert_eq!(xml(NASTY), "a&quot;b\\c%d&amp;e&lt;f&apos;g&gt;h");
        assert_eq!(xml("&amp;"), "&amp;amp;");
    }

    #[test]
    fn reg_escapes_backslash_and_quote() {
        assert_eq!(reg(NASTY), r#"a\"b\\c%d&e<f'g>h"#);
        assert_eq!(reg(r"C:\x\"), r"C:\\x\\");
    }

    #[test]
    fn msi_doubles_quotes() {
        assert_eq!(msi_value(NASTY), r#""a""b\c%d&e<f'g>h""#);
        assert_eq!(msi_value(""), r#""""#);
    }

    #[test]
    fn cmd_doubles_percent() {
        assert_eq!(cmd("%PATH%"), "%%PATH%%");
        assert_eq!(cmd(NASTY), r#"a"b\c%%d&e<f'g>h"#);
    }

    #[test]
    fn powershell_single_quotes() {
        assert_eq!(ps_single(NASTY), r#"'a"b\c%d&e<f''g>h'"#);
        assert_eq!(ps_single("$(calc)"), "'$(calc)'");
        assert_eq!(ps_single("it\u{2019}s"), "'it\u{2019}\u{2019}s'");
    }
}
