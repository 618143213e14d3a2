//! `imd-token.reg`: the two policy values for `regedit /s` or `reg import`,
//! as regedit itself writes them: UTF-16 LE with a BOM and CRLF lines.

use super::Ctx;
use super::escape::reg;

/// The file as text, with `\n` line ends (converted on encoding).
pub(crate) fn reg_text(ctx: &Ctx) -> String {
    format!(
        "Windows Registry Editor Version 5.00\n\n\
         ; IMD mass deployment token. Token expires: {}.\n\
         [HKEY_LOCAL_MACHINE\\{}]\n\
         \"Token\"=\"{}\"\n\
         \"Server\"=\"{}\"\n\n",
        ctx.expiry_text(),
        ctx.policy_key().replace("Software", "SOFTWARE"),
        reg(ctx.token),
        reg(ctx.server),
    )
}

/// UTF-16 LE bytes with BOM and CRLF line endings.
pub(crate) fn reg_file(ctx: &Ctx) -> Vec<u8> {
    encode_utf16le_crlf(&reg_text(ctx))
}

pub(crate) fn encode_utf16le_crlf(text: &str) -> Vec<u8> {
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let mut out = vec![0xFF, 0xFE];
    for unit in crlf.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}
