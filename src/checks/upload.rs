//! Uploads: file names, extensions, declared types and magic numbers of the files a request
//! carries, checked as the body streams through.
//!
//! Two kinds of request are uploads. A `multipart/form-data` body (RFC 7578): every part whose
//! `Content-Disposition` has a `filename` or `filename*` (RFC 5987) parameter is a file; other
//! parts are form fields and only counted. A raw body with a `Content-Disposition` header that
//! names a file (`attachment; filename="clip.mp3"`): the whole body is the file and the
//! request's `Content-Type` is its declared type. Every other request is not an upload and
//! [`start`] answers `None`.
//!
//! For each file, in this order: every name it is given (both `filename` and `filename*` when
//! both are sent, since the upstream may read either) passes the name rules; its extension is in
//! the allowlist; its declared type, unless generic (`application/octet-stream` or absent), is
//! one of the types of that extension's kind; and its first bytes carry that kind's magic
//! number.
//!
//! The multipart parser is a push parser: [`UploadInspector::feed`] takes chunks of any size,
//! boundaries split anywhere, and keeps only the part headers being read (at most
//! `max_part_header_bytes`) and the first [`MAGIC_WINDOW`] bytes of the file being read; the
//! bytes of a delimiter split across chunks are not stored at all (see [`scan`]). Async
//! multipart crates (multer) pull from a stream they own; the filter is handed chunks by the
//! host, so the framing is done here, with `memchr` finding the delimiter and `httparse`
//! parsing each part's header block. The magic numbers come from `infer`, with the gaps it
//! leaves filled here (see [`KINDS`]).

use memchr::memmem;
use serde::Deserialize;

use crate::config::{err, ConfigError};
use crate::headers::RequestHeaders;
use crate::reject::Reject;

/// Default cap per file: 500 MB, the reference audio service's default.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 500 * 1024 * 1024;
/// Largest cap per file a policy may set: 10 GiB, the reference FFmpeg service's largest.
pub const MAX_MAX_FILE_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Default number of files in one request.
pub const DEFAULT_MAX_FILES: u32 = 10;
/// Default number of parts (files and form fields) in one request.
pub const DEFAULT_MAX_PARTS: u32 = 64;
/// Largest `max_files` / `max_parts` a policy may set.
pub const MAX_MAX_PARTS: u32 = 1000;
/// Default cap on one part's header block (all its header lines and the blank line).
pub const DEFAULT_MAX_PART_HEADER_BYTES: u32 = 8 * 1024;
/// Bounds of `max_part_header_bytes`.
pub const MIN_MAX_PART_HEADER_BYTES: u32 = 256;
pub const MAX_MAX_PART_HEADER_BYTES: u32 = 64 * 1024;
/// How many first bytes of a file are kept to judge its magic number: PDF readers look for
/// `%PDF` within the first 1024 bytes (PDF Reference 1.4, H.3.4.1), the widest window of the
/// table; every other signature sits in the first 64.
pub const MAGIC_WINDOW: usize = 1024;
/// Longest file name accepted, in bytes (the common file-system limit).
pub const MAX_NAME_BYTES: usize = 255;
/// Part headers beyond this many in one part are malformed.
const MAX_PART_HEADERS: usize = 16;
/// Spaces or tabs allowed after a boundary before its line ends (RFC 2046 transport padding).
const MAX_PADDING: u8 = 64;

// ---------------------------------------------------------------------------------------------
// The table of kinds.

/// A kind of file the filter can recognise by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mp3,
    Wav,
    Flac,
    Ogg,
    M4a,
    Aac,
    Wma,
    Png,
    Jpeg,
    Gif,
    Webp,
    Pdf,
}

struct KindInfo {
    kind: Kind,
    /// Extensions (lowercase, no dot) of this kind.
    extensions: &'static [&'static str],
    /// Media types (lowercase, no parameters) a client may declare for it.
    types: &'static [&'static str],
    /// Whether the first bytes (up to [`MAGIC_WINDOW`]) carry its magic number.
    matches: fn(&[u8]) -> bool,
}

/// Every kind, with its extensions, media types and magic number. `infer` supplies the
/// signatures where it has them; filled here: MPEG audio frames `infer` misses (it knows only
/// `FF FB`, `FF F3`, `FF F2`), M4A files whose `ftyp` box lists `M4A ` as a compatible brand,
/// ADIF AAC, WMA (the ASF header, which `infer` files under WMV), GIF's full `GIF87a`/`GIF89a`
/// and WebP's `RIFF` (`infer` checks only `WEBP` at offset 8).
const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: Kind::Mp3,
        extensions: &["mp3"],
        types: &["audio/mpeg", "audio/mp3", "audio/mpeg3", "audio/x-mpeg-3"],
        matches: is_mp3,
    },
    KindInfo {
        kind: Kind::Wav,
        extensions: &["wav"],
        types: &["audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"],
        matches: infer::audio::is_wav,
    },
    KindInfo {
        kind: Kind::Flac,
        extensions: &["flac"],
        types: &["audio/flac", "audio/x-flac"],
        matches: infer::audio::is_flac,
    },
    KindInfo {
        kind: Kind::Ogg,
        extensions: &["ogg", "oga", "opus"],
        types: &["audio/ogg", "application/ogg", "audio/opus"],
        matches: infer::audio::is_ogg,
    },
    KindInfo {
        kind: Kind::M4a,
        extensions: &["m4a"],
        types: &["audio/mp4", "audio/x-m4a", "audio/m4a"],
        matches: is_m4a,
    },
    KindInfo {
        kind: Kind::Aac,
        extensions: &["aac"],
        types: &["audio/aac", "audio/x-aac", "audio/aacp"],
        matches: is_aac,
    },
    KindInfo {
        kind: Kind::Wma,
        extensions: &["wma"],
        types: &["audio/x-ms-wma"],
        // WMA is audio in an ASF container: the ASF header object's GUID.
        matches: infer::video::is_wmv,
    },
    KindInfo {
        kind: Kind::Png,
        extensions: &["png"],
        types: &["image/png"],
        matches: infer::image::is_png,
    },
    KindInfo {
        kind: Kind::Jpeg,
        extensions: &["jpg", "jpeg"],
        types: &["image/jpeg", "image/pjpeg"],
        matches: infer::image::is_jpeg,
    },
    KindInfo {
        kind: Kind::Gif,
        extensions: &["gif"],
        types: &["image/gif"],
        matches: is_gif,
    },
    KindInfo {
        kind: Kind::Webp,
        extensions: &["webp"],
        types: &["image/webp"],
        matches: is_webp,
    },
    KindInfo {
        kind: Kind::Pdf,
        extensions: &["pdf"],
        types: &["application/pdf"],
        matches: infer::archive::is_pdf,
    },
];

/// Declared types that claim nothing about the content: the file is judged by its extension.
/// curl sends `application/octet-stream` for every extension it does not know (mp3 among them).
const GENERIC_TYPES: &[&str] = &["application/octet-stream", "binary/octet-stream"];

/// MPEG audio: an ID3v2 tag, or a Layer III frame header (11 sync bits, a version that is not
/// reserved, layer III, a bitrate index that is not 15, a sampling rate index that is not 3).
fn is_mp3(buf: &[u8]) -> bool {
    if infer::audio::is_mp3(buf) {
        return true;
    }
    match buf {
        [0xFF, b1, b2, ..] => {
            b1 & 0xE0 == 0xE0
                && (b1 >> 3) & 0x03 != 0x01
                && (b1 >> 1) & 0x03 == 0x01
                && b2 >> 4 != 0x0F
                && (b2 >> 2) & 0x03 != 0x03
        }
        _ => false,
    }
}

/// M4A: `infer`'s `ftypM4A`, or an `ftyp` box whose major or a compatible brand is `M4A `
/// (iTunes and some encoders write `mp42` or `isom` first).
fn is_m4a(buf: &[u8]) -> bool {
    if infer::audio::is_m4a(buf) {
        return true;
    }
    let (Some(size), Some(b"ftyp")) = (buf.get(0..4), buf.get(4..8)) else {
        return false;
    };
    let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
    let end = size.min(buf.len());
    let is_audio = |brand: &[u8]| matches!(brand, b"M4A " | b"M4B ");
    if buf.get(8..12).is_some_and(is_audio) {
        return true;
    }
    // Compatible brands start after the major brand and the minor version.
    buf.get(16..end)
        .is_some_and(|brands| brands.chunks_exact(4).any(is_audio))
}

/// AAC: ADTS frames (`infer`), or an ADIF header.
fn is_aac(buf: &[u8]) -> bool {
    infer::audio::is_aac(buf) || buf.starts_with(b"ADIF")
}

fn is_gif(buf: &[u8]) -> bool {
    buf.starts_with(b"GIF87a") || buf.starts_with(b"GIF89a")
}

fn is_webp(buf: &[u8]) -> bool {
    buf.starts_with(b"RIFF") && infer::image::is_webp(buf)
}

fn info(kind: Kind) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// Every extension in the table, in table order; a policy's allowlist is a bit set over it.
fn all_extensions() -> impl Iterator<Item = (&'static str, Kind)> {
    KINDS
        .iter()
        .flat_map(|k| k.extensions.iter().map(move |e| (*e, k.kind)))
}

fn extension_index(ext: &str) -> Option<usize> {
    all_extensions().position(|(e, _)| e.eq_ignore_ascii_case(ext))
}

/// The kind a declared media type names, `None` for a type not in the table.
fn kind_of_type(media_type: &[u8]) -> Option<Kind> {
    KINDS
        .iter()
        .find(|k| k.types.iter().any(|t| t.as_bytes() == media_type))
        .map(|k| k.kind)
}

/// Whether the first bytes of a file (up to [`MAGIC_WINDOW`]) carry the magic number of `kind`.
pub fn magic_matches(kind: Kind, first_bytes: &[u8]) -> bool {
    info(kind).is_some_and(|k| (k.matches)(first_bytes))
}

// ---------------------------------------------------------------------------------------------
// Configuration.

/// A policy's `upload` section, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpload {
    /// File name extensions accepted, without the dot, matched ignoring case. Each must be in
    /// the magic-number table: mp3, wav, flac, ogg, oga, opus, m4a, aac, wma, png, jpg, jpeg,
    /// gif, webp, pdf.
    pub allowed_extensions: Vec<String>,
    /// Largest file, in bytes (default 500 MB, at most 10 GiB). A raw-body upload's whole body
    /// is its file.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Most files in one multipart request (default 10, at most 1000).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
    /// Most parts, files and form fields together, in one multipart request (default 64, at
    /// least `max_files`, at most 1000).
    #[serde(default = "default_max_parts")]
    pub max_parts: u32,
    /// Largest header block of one part, in bytes (default 8192, 256 to 65536): with
    /// `MAGIC_WINDOW`, what the filter holds per request.
    #[serde(default = "default_max_part_header_bytes")]
    pub max_part_header_bytes: u32,
}

fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}
fn default_max_files() -> u32 {
    DEFAULT_MAX_FILES
}
fn default_max_parts() -> u32 {
    DEFAULT_MAX_PARTS
}
fn default_max_part_header_bytes() -> u32 {
    DEFAULT_MAX_PART_HEADER_BYTES
}

/// A compiled `upload` section. Small and `Copy`, so each upload's inspector carries its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadPolicy {
    /// Bit `i` set: the `i`-th extension of [`all_extensions`] is allowed.
    extensions: u32,
    pub max_file_bytes: u64,
    pub max_files: u32,
    pub max_parts: u32,
    pub max_part_header_bytes: u32,
}

/// Compiles a policy's `upload` section reached at `field` (`policies[2].upload`).
pub fn compile_upload(raw: &RawUpload, field: &str) -> Result<UploadPolicy, ConfigError> {
    let at = |f: &str| format!("{field}.{f}");
    if raw.allowed_extensions.is_empty() {
        return Err(err(
            at("allowed_extensions"),
            "must list at least one extension",
        ));
    }
    let mut extensions = 0u32;
    for (i, ext) in raw.allowed_extensions.iter().enumerate() {
        let here = format!("{field}.allowed_extensions[{i}]");
        if ext.starts_with('.') {
            return Err(err(here, "write the extension without the leading dot"));
        }
        let Some(index) = extension_index(ext) else {
            let known: Vec<&str> = all_extensions().map(|(e, _)| e).collect();
            return Err(err(
                here,
                format!(
                    "`{ext}` has no magic number in the table, so its content could not be \
                     checked; known extensions: {}",
                    known.join(", ")
                ),
            ));
        };
        let bit = 1u32 << index;
        if extensions & bit != 0 {
            return Err(err(here, format!("`{ext}` is listed twice")));
        }
        extensions |= bit;
    }
    if raw.max_file_bytes == 0 || raw.max_file_bytes > MAX_MAX_FILE_BYTES {
        return Err(err(
            at("max_file_bytes"),
            format!("must be between 1 and {MAX_MAX_FILE_BYTES} (10 GiB)"),
        ));
    }
    if raw.max_files == 0 || raw.max_files > MAX_MAX_PARTS {
        return Err(err(
            at("max_files"),
            format!("must be between 1 and {MAX_MAX_PARTS}"),
        ));
    }
    if raw.max_parts > MAX_MAX_PARTS {
        return Err(err(
            at("max_parts"),
            format!("must be at most {MAX_MAX_PARTS}"),
        ));
    }
    if raw.max_parts < raw.max_files {
        return Err(err(
            at("max_parts"),
            format!(
                "is {} but max_files is {}: every file is a part, so max_parts must be at least \
                 max_files",
                raw.max_parts, raw.max_files
            ),
        ));
    }
    if !(MIN_MAX_PART_HEADER_BYTES..=MAX_MAX_PART_HEADER_BYTES).contains(&raw.max_part_header_bytes)
    {
        return Err(err(
            at("max_part_header_bytes"),
            format!("must be between {MIN_MAX_PART_HEADER_BYTES} and {MAX_MAX_PART_HEADER_BYTES}"),
        ));
    }
    Ok(UploadPolicy {
        extensions,
        max_file_bytes: raw.max_file_bytes,
        max_files: raw.max_files,
        max_parts: raw.max_parts,
        max_part_header_bytes: raw.max_part_header_bytes,
    })
}

impl UploadPolicy {
    /// The kind of an allowed extension, `None` when the extension is not allowed.
    fn allowed_kind(&self, ext: &str) -> Option<Kind> {
        all_extensions()
            .enumerate()
            .find(|(i, (e, _))| self.extensions & (1 << i) != 0 && e.eq_ignore_ascii_case(ext))
            .map(|(_, (_, kind))| kind)
    }

    /// Whether some allowed extension is of `kind`.
    fn allows_kind(&self, kind: Kind) -> bool {
        all_extensions()
            .enumerate()
            .any(|(i, (_, k))| self.extensions & (1 << i) != 0 && k == kind)
    }

    /// The allowed extensions, for a rejection's detail (from the configuration, never the client).
    pub fn allowed_list(&self) -> String {
        let list: Vec<&str> = all_extensions()
            .enumerate()
            .filter(|(i, _)| self.extensions & (1 << i) != 0)
            .map(|(_, (e, _))| e)
            .collect();
        list.join(", ")
    }

    fn not_allowed(&self) -> Reject {
        Reject::FileTypeNotAllowed {
            allowed: self.allowed_list(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Header parameters (Content-Type, Content-Disposition).

/// One `name=value` parameter. `raw` is the value as sent (a quoted string without its quotes
/// but with its backslashes), `value` is it unescaped: a name is checked in both forms, because
/// browsers do not escape backslashes in multipart file names and upstreams differ on whether
/// they unescape.
struct Param<'a> {
    name: &'a [u8],
    raw: &'a [u8],
    value: Vec<u8>,
}

/// A header value of the form `main *(";" name "=" (token / quoted-string))`: the main value
/// (lowercase) and the parameters. `None` when it is not of that form or a parameter repeats
/// (two `filename`s are an attempt to be read differently by different parsers).
fn parse_params(value: &[u8]) -> Option<(Vec<u8>, Vec<Param<'_>>)> {
    let mut rest = value;
    let main_end = memchr::memchr(b';', rest).unwrap_or(rest.len());
    let main = trim(rest.get(..main_end)?);
    if main.is_empty() || !main.iter().all(|&b| is_tchar(b) || b == b'/') {
        return None;
    }
    let main = main.to_ascii_lowercase();
    rest = rest.get(main_end..)?;
    let mut params: Vec<Param<'_>> = Vec::new();
    loop {
        rest = trim_start(rest);
        match rest.split_first() {
            None => break,
            Some((b';', tail)) => rest = trim_start(tail),
            Some(_) => return None,
        }
        if rest.is_empty() {
            break;
        }
        let eq = memchr::memchr(b'=', rest)?;
        let name = trim(rest.get(..eq)?);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return None;
        }
        rest = trim_start(rest.get(eq + 1..)?);
        let (raw, value, tail) = if let Some(quoted) = rest.strip_prefix(b"\"") {
            let (raw, value, len) = quoted_string(quoted)?;
            (raw, value, quoted.get(len..)?)
        } else {
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            let raw = trim(rest.get(..end)?);
            if raw.is_empty() || raw.contains(&b'"') {
                return None;
            }
            (raw, raw.to_vec(), rest.get(end..)?)
        };
        if params.iter().any(|p| p.name.eq_ignore_ascii_case(name)) {
            return None;
        }
        params.push(Param { name, raw, value });
        rest = tail;
    }
    Some((main, params))
}

/// The inside of a quoted string (after the opening quote): its raw bytes, its unescaped value,
/// and how many bytes it took including the closing quote.
fn quoted_string(input: &[u8]) -> Option<(&[u8], Vec<u8>, usize)> {
    let mut value = Vec::new();
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        match b {
            b'"' => return Some((input.get(..i)?, value, i + 1)),
            b'\\' => {
                value.push(*input.get(i + 1)?);
                i += 2;
            }
            _ => {
                value.push(b);
                i += 1;
            }
        }
    }
    None
}

fn param<'p, 'a>(params: &'p [Param<'a>], name: &str) -> Option<&'p Param<'a>> {
    params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name.as_bytes()))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let Some((b' ' | b'\t', rest)) = s.split_first() {
        s = rest;
    }
    s
}

fn trim(s: &[u8]) -> &[u8] {
    let mut s = trim_start(s);
    while let Some((b' ' | b'\t', rest)) = s.split_last() {
        s = rest;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// File names.

/// Decodes an RFC 5987 `filename*` value (`UTF-8''na%C3%AFve.mp3`; ISO-8859-1 too, as the RFC
/// requires). `None` for another charset, a bad escape, or bytes that are not text.
fn decode_ext_value(value: &[u8]) -> Option<String> {
    let mut fields = value.splitn(3, |&b| b == b'\'');
    let charset = fields.next()?;
    let _language = fields.next()?;
    let encoded = fields.next()?;
    let bytes = percent_decode(encoded)?;
    if charset.eq_ignore_ascii_case(b"utf-8") {
        String::from_utf8(bytes).ok()
    } else if charset.eq_ignore_ascii_case(b"iso-8859-1") {
        Some(bytes.into_iter().map(char::from).collect())
    } else {
        None
    }
}

/// `%XX` decoding; `None` on a `%` not followed by two hex digits.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            let hi = hex(*input.get(i + 1)?)?;
            let lo = hex(*input.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Characters that a later normalisation (NFKC, a bidi-unaware display) turns into a separator
/// or a dot, or that reorder the text shown for a name (`mp3.exe` shown as `exe.3pm`).
fn is_disguise(c: char) -> bool {
    matches!(
        c,
        '\u{2215}' // division slash
            | '\u{2044}' // fraction slash
            | '\u{29F8}' // big solidus
            | '\u{FF0F}' // fullwidth solidus
            | '\u{FF3C}' // fullwidth reverse solidus
            | '\u{FE68}' // small reverse solidus
            | '\u{FF0E}' // fullwidth full stop
            | '\u{2024}' // one dot leader
            | '\u{2025}' // two dot leader
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// Checks one file name as sent, and again percent-decoded (an upstream that decodes would see
/// `%2e%2e%2f` as `../`). Returns the name as text.
fn check_name(name: &[u8]) -> Result<&str, Reject> {
    check_name_once(name)?;
    if name.contains(&b'%') {
        if let Some(decoded) = percent_decode(name) {
            if decoded != name {
                check_name_once(&decoded)?;
            }
        }
    }
    std::str::from_utf8(name).map_err(|_| Reject::InvalidFileName {
        reason: "is not UTF-8",
    })
}

fn check_name_once(name: &[u8]) -> Result<(), Reject> {
    let bad = |reason| Err(Reject::InvalidFileName { reason });
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("is longer than 255 bytes");
    }
    if name.iter().any(|&b| b < 0x20 || b == 0x7F) {
        return bad("contains a control character or NUL");
    }
    if name.iter().any(|&b| b == b'/' || b == b'\\') {
        return bad("contains a path separator");
    }
    if memmem::find(name, b"..").is_some() {
        return bad("contains `..`");
    }
    let Ok(text) = std::str::from_utf8(name) else {
        return bad("is not UTF-8");
    };
    if text.chars().any(|c| c.is_control() || is_disguise(c)) {
        return bad("contains a character that disguises a separator, a dot or the name's order");
    }
    Ok(())
}

/// The extension of a checked name: after the last dot, and not the whole name (`.mp3` is a
/// hidden file without an extension).
fn extension(name: &str) -> Option<&str> {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => Some(ext),
        _ => None,
    }
}

/// Judges a file's names and declared type; returns the kind its bytes must match.
fn judge_file(
    policy: &UploadPolicy,
    params: &[Param<'_>],
    declared: Option<&[u8]>,
) -> Result<Kind, Reject> {
    let mut kind = None;
    let mut names = Vec::with_capacity(2);
    if let Some(p) = param(params, "filename") {
        // The raw form first: a backslash the unescaping would remove is still a separator to
        // an upstream that does not unescape.
        check_name(p.raw)?;
        names.push(check_name(&p.value)?.to_string());
    }
    if let Some(p) = param(params, "filename*") {
        let decoded = decode_ext_value(&p.value).ok_or(Reject::InvalidFileName {
            reason: "is not a valid RFC 5987 `filename*` value in UTF-8 or ISO-8859-1",
        })?;
        check_name(decoded.as_bytes())?;
        names.push(decoded);
    }
    for name in &names {
        let this = extension(name)
            .and_then(|ext| policy.allowed_kind(ext))
            .ok_or_else(|| policy.not_allowed())?;
        match kind {
            Some(earlier) if earlier != this => return Err(Reject::ContentMismatch),
            _ => kind = Some(this),
        }
    }
    let kind = kind.ok_or_else(|| policy.not_allowed())?;
    if let Some(declared) = declared {
        let media_type = parse_params(declared)
            .map(|(main, _)| main)
            .ok_or_else(|| policy.not_allowed())?;
        if !GENERIC_TYPES.iter().any(|t| t.as_bytes() == media_type) {
            let claimed = kind_of_type(&media_type)
                .filter(|k| policy.allows_kind(*k))
                .ok_or_else(|| policy.not_allowed())?;
            if claimed != kind {
                return Err(Reject::ContentMismatch);
            }
        }
    }
    Ok(kind)
}

// ---------------------------------------------------------------------------------------------
// The inspector.

/// One file being read: its size against the cap and its first bytes against its kind.
#[derive(Debug)]
struct FileCheck {
    kind: Kind,
    /// The first bytes, until [`MAGIC_WINDOW`] of them are in or the file ends.
    window: Vec<u8>,
    judged: bool,
    bytes: u64,
    limit: u64,
}

impl FileCheck {
    fn new(kind: Kind, limit: u64) -> Self {
        Self {
            kind,
            window: Vec::new(),
            judged: false,
            bytes: 0,
            limit,
        }
    }

    /// The magic number is judged before the size, so that the verdict on a file does not
    /// depend on how its bytes were split into chunks.
    fn feed(&mut self, data: &[u8]) -> Result<(), Reject> {
        if !self.judged {
            // One exact allocation: growth by doubling would hold up to twice the window.
            self.window
                .reserve_exact(MAGIC_WINDOW.saturating_sub(self.window.len()));
            let room = MAGIC_WINDOW.saturating_sub(self.window.len());
            self.window
                .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
            if self.window.len() >= MAGIC_WINDOW {
                self.judge()?;
            }
        }
        self.bytes = self.bytes.saturating_add(data.len() as u64);
        if self.bytes > self.limit {
            return Err(Reject::FileTooLarge { limit: self.limit });
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), Reject> {
        if self.judged {
            Ok(())
        } else {
            self.judge()
        }
    }

    fn judge(&mut self) -> Result<(), Reject> {
        self.judged = true;
        let ok = magic_matches(self.kind, &self.window);
        self.window = Vec::new();
        if ok {
            Ok(())
        } else {
            Err(Reject::ContentMismatch)
        }
    }
}

/// Checks the files of one upload as its body streams through. Built by [`start`].
#[derive(Debug)]
pub struct UploadInspector {
    body: Body,
    /// A rejection already returned: every later call returns it again.
    failed: Option<Reject>,
}

#[derive(Debug)]
enum Body {
    Raw(FileCheck),
    Multipart(Box<Multipart>),
}

#[derive(Debug)]
struct Multipart {
    policy: UploadPolicy,
    /// Finds `CRLF "--" boundary`, which owns the delimiter (see [`scan`] for why that is all a
    /// split delimiter needs).
    finder: memmem::Finder<'static>,
    state: State,
    /// The header block of the part being read, at most `max_part_header_bytes`.
    header: Vec<u8>,
    parts: u32,
    files: u32,
    /// The file part being read, `None` in a form field.
    file: Option<FileCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter, `matched` bytes of it seen at the end of the last chunk. It
    /// starts at 2: the first delimiter may open the body without the CRLF before it.
    Preamble { matched: usize },
    /// Just after a boundary: `--` (the last), or padding and CRLF (a part follows).
    AfterBoundary(After),
    /// Reading a part's header block.
    Headers,
    /// Reading a part's content.
    Content { matched: usize },
    /// After the close delimiter: ignored (RFC 2046).
    Epilogue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Start,
    Dash,
    Padding(u8),
    Cr,
}

fn malformed(reason: &'static str) -> Reject {
    Reject::MalformedMultipart { reason }
}

/// Decides whether a request is an upload under `policy` and, if so, starts inspecting it.
/// Checks what the headers alone can tell (a multipart boundary, a raw upload's name and type,
/// a declared length over the cap) before any body byte is read.
pub fn start(
    policy: &UploadPolicy,
    headers: &RequestHeaders,
) -> Result<Option<UploadInspector>, Reject> {
    let content_type = headers
        .unique("content-type")
        .map_err(|_| Reject::DuplicatedHeader {
            header: "Content-Type",
        })?;
    let parsed = content_type.and_then(parse_params);
    let says_multipart = content_type.is_some_and(|v| {
        trim_start(v)
            .get(..10)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"multipart/"))
    });
    if says_multipart && parsed.is_none() {
        return Err(malformed("has a Content-Type that cannot be parsed"));
    }
    if let Some((main, params)) = &parsed {
        if main.starts_with(b"multipart/") {
            if main.as_slice() != b"multipart/form-data" {
                // Files in multipart/mixed or /related would pass unchecked to an upstream
                // that reads them.
                return Err(policy.not_allowed());
            }
            let boundary = param(params, "boundary")
                .map(|p| p.value.as_slice())
                .ok_or(malformed("has no boundary parameter in its Content-Type"))?;
            return Ok(Some(UploadInspector::multipart(*policy, boundary)?));
        }
    }
    let disposition =
        headers
            .unique("content-disposition")
            .map_err(|_| Reject::DuplicatedHeader {
                header: "Content-Disposition",
            })?;
    let Some(disposition) = disposition else {
        return Ok(None);
    };
    let Some((_, params)) = parse_params(disposition) else {
        return Err(Reject::InvalidFileName {
            reason: "is in a Content-Disposition header that cannot be parsed",
        });
    };
    if param(&params, "filename").is_none() && param(&params, "filename*").is_none() {
        return Ok(None);
    }
    let kind = judge_file(policy, &params, content_type)?;
    let declared_length = headers
        .first_str("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > policy.max_file_bytes) {
        return Err(Reject::FileTooLarge {
            limit: policy.max_file_bytes,
        });
    }
    Ok(Some(UploadInspector {
        body: Body::Raw(FileCheck::new(kind, policy.max_file_bytes)),
        failed: None,
    }))
}

impl UploadInspector {
    fn multipart(policy: UploadPolicy, boundary: &[u8]) -> Result<Self, Reject> {
        // RFC 2046: 1 to 70 of these characters, not ending in a space. No CR or LF, which the
        // delimiter search relies on.
        let bchar = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
        if boundary.is_empty()
            || boundary.len() > 70
            || !boundary.iter().all(|&b| bchar(b))
            || boundary.ends_with(b" ")
        {
            return Err(malformed(
                "has a boundary that is not 1 to 70 RFC 2046 characters",
            ));
        }
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary);
        Ok(Self {
            body: Body::Multipart(Box::new(Multipart {
                policy,
                finder: memmem::Finder::new(&delimiter).into_owned(),
                state: State::Preamble { matched: 2 },
                header: Vec::new(),
                parts: 0,
                files: 0,
                file: None,
            })),
            failed: None,
        })
    }

    /// The next body bytes, any number of them.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Reject> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let result = match &mut self.body {
            Body::Raw(file) => file.feed(chunk),
            Body::Multipart(m) => m.feed(chunk),
        };
        self.remember(result)
    }

    /// The body ended: a file not judged yet (shorter than the window) is judged now, and a
    /// multipart body must have reached its close delimiter.
    pub fn finish(&mut self) -> Result<(), Reject> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let result = match &mut self.body {
            Body::Raw(file) => file.finish(),
            Body::Multipart(m) => m.finish(),
        };
        self.remember(result)
    }

    /// Bytes this inspector holds beyond its fixed size (the delimiter, part headers being
    /// read, the magic window), bounded by `max_part_header_bytes`, [`MAGIC_WINDOW`] and the
    /// boundary whatever the body size.
    pub fn held_bytes(&self) -> usize {
        match &self.body {
            Body::Raw(file) => file.window.capacity(),
            Body::Multipart(m) => {
                m.finder.needle().len()
                    + m.header.capacity()
                    + m.file.as_ref().map_or(0, |f| f.window.capacity())
            }
        }
    }

    fn remember(&mut self, result: Result<(), Reject>) -> Result<(), Reject> {
        if let Err(why) = &result {
            self.failed = Some(why.clone());
        }
        result
    }
}

impl Multipart {
    fn feed(&mut self, mut input: &[u8]) -> Result<(), Reject> {
        while !input.is_empty() {
            let used = self.step(input)?;
            input = input.get(used..).unwrap_or_default();
        }
        Ok(())
    }

    /// Consumes a prefix of `input` (at least one byte).
    fn step(&mut self, input: &[u8]) -> Result<usize, Reject> {
        match self.state {
            State::Preamble { mut matched } => {
                let (used, found) = scan(self.finder.needle(), &mut matched, input, |_| Ok(()))?;
                self.state = if found {
                    State::AfterBoundary(After::Start)
                } else {
                    State::Preamble { matched }
                };
                Ok(used)
            }
            State::Content { mut matched } => {
                let file = &mut self.file;
                let (used, found) = scan(self.finder.needle(), &mut matched, input, |data| {
                    file.as_mut().map_or(Ok(()), |f| f.feed(data))
                })?;
                if found {
                    if let Some(mut file) = self.file.take() {
                        file.finish()?;
                    }
                    self.state = State::AfterBoundary(After::Start);
                } else {
                    self.state = State::Content { matched };
                }
                Ok(used)
            }
            State::AfterBoundary(after) => {
                let Some(&b) = input.first() else {
                    return Ok(0);
                };
                self.state = match (after, b) {
                    (After::Start, b'-') => State::AfterBoundary(After::Dash),
                    (After::Dash, b'-') => State::Epilogue,
                    (After::Start, b' ' | b'\t') => State::AfterBoundary(After::Padding(1)),
                    (After::Padding(n), b' ' | b'\t') if n < MAX_PADDING => {
                        State::AfterBoundary(After::Padding(n + 1))
                    }
                    (After::Start | After::Padding(_), b'\r') => State::AfterBoundary(After::Cr),
                    (After::Cr, b'\n') => {
                        self.parts = self.parts.saturating_add(1);
                        if self.parts > self.policy.max_parts {
                            return Err(Reject::TooManyParts {
                                what: "parts",
                                limit: self.policy.max_parts,
                            });
                        }
                        self.header.clear();
                        State::Headers
                    }
                    _ => return Err(malformed("has a boundary line that does not end in CRLF")),
                };
                Ok(1)
            }
            State::Headers => self.read_headers(input),
            State::Epilogue => Ok(input.len()),
        }
    }

    /// Collects a part's header block up to the blank line, then judges the part.
    fn read_headers(&mut self, input: &[u8]) -> Result<usize, Reject> {
        let cap = self.policy.max_part_header_bytes as usize;
        let old = self.header.len();
        let take = input.len().min(cap.saturating_sub(old));
        // Allocated once per upload at the cap, reused by every part.
        self.header.reserve_exact(cap.saturating_sub(old));
        self.header
            .extend_from_slice(input.get(..take).unwrap_or_default());
        let end = if self.header.starts_with(b"\r\n") {
            Some(2)
        } else {
            let from = old.saturating_sub(3);
            self.header
                .get(from..)
                .and_then(|tail| memmem::find(tail, b"\r\n\r\n"))
                .map(|p| from + p + 4)
        };
        let Some(end) = end else {
            if self.header.len() >= cap {
                return Err(malformed("has a part whose headers exceed the size limit"));
            }
            return Ok(take);
        };
        self.header.truncate(end);
        self.file = self.judge_part()?;
        self.header.clear();
        self.state = State::Content { matched: 0 };
        // The block did not end within what was there before, so `end > old`.
        Ok(end.saturating_sub(old).max(1))
    }

    /// A part's headers: a file gets its checks, a form field none.
    fn judge_part(&mut self) -> Result<Option<FileCheck>, Reject> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
        let parsed = match httparse::parse_headers(&self.header, &mut slots) {
            Ok(httparse::Status::Complete((_, parsed))) => parsed,
            _ if control_in_disposition(&self.header) => {
                // httparse refuses control characters in any header value; in the line that
                // names the file, that is the name rule speaking.
                return Err(Reject::InvalidFileName {
                    reason: "contains a control character or NUL",
                });
            }
            _ => return Err(malformed("has a part with malformed headers")),
        };
        let mut disposition = None;
        let mut content_type = None;
        for h in parsed.iter() {
            let slot = if h.name.eq_ignore_ascii_case("content-disposition") {
                &mut disposition
            } else if h.name.eq_ignore_ascii_case("content-type") {
                &mut content_type
            } else if h.name.eq_ignore_ascii_case("content-transfer-encoding") {
                // RFC 7578 deprecates it; a base64 file would hide its magic number.
                let plain = [&b"binary"[..], b"7bit", b"8bit"];
                if !plain.iter().any(|p| trim(h.value).eq_ignore_ascii_case(p)) {
                    return Err(malformed("has a part with a Content-Transfer-Encoding"));
                }
                continue;
            } else {
                continue;
            };
            if slot.replace(h.value).is_some() {
                return Err(malformed("has a part with a repeated header"));
            }
        }
        let disposition = disposition.ok_or(malformed("has a part without Content-Disposition"))?;
        let (kind, params) = parse_params(disposition).ok_or(malformed(
            "has a part whose Content-Disposition cannot be parsed",
        ))?;
        if kind != b"form-data" {
            return Err(malformed(
                "has a part whose Content-Disposition is not form-data",
            ));
        }
        if param(&params, "filename").is_none() && param(&params, "filename*").is_none() {
            return Ok(None);
        }
        self.files = self.files.saturating_add(1);
        if self.files > self.policy.max_files {
            return Err(Reject::TooManyParts {
                what: "files",
                limit: self.policy.max_files,
            });
        }
        let kind = judge_file(&self.policy, &params, content_type)?;
        Ok(Some(FileCheck::new(kind, self.policy.max_file_bytes)))
    }

    fn finish(&mut self) -> Result<(), Reject> {
        match self.state {
            State::Epilogue => Ok(()),
            _ => Err(malformed("ends before its closing boundary")),
        }
    }
}

/// Whether a part's `Content-Disposition` line holds a control character (other than tab).
fn control_in_disposition(block: &[u8]) -> bool {
    block
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| {
            line.get(..20)
                .is_some_and(|name| name.eq_ignore_ascii_case(b"content-disposition:"))
        })
        .any(|line| line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7F))
}

/// Looks for `delimiter` in `input`, `matched` of its bytes having been seen at the end of the
/// previous input, and hands every byte that is not part of a delimiter to `emit`. Returns how
/// many bytes of `input` it used and whether a delimiter ended there.
///
/// The bytes of a delimiter split across inputs need no buffer: they are `delimiter[..matched]`.
/// When the rest does not follow, they were content after all, and no delimiter can start
/// inside them: `CR` appears in a delimiter only as its first byte (boundaries hold no CR), so
/// the only place a delimiter may start is at a `CR`, and the last `CR` of an input is the only
/// candidate for a partial match at its end.
fn scan(
    delimiter: &[u8],
    matched: &mut usize,
    input: &[u8],
    mut emit: impl FnMut(&[u8]) -> Result<(), Reject>,
) -> Result<(usize, bool), Reject> {
    if *matched > 0 {
        let carried = delimiter.get(..*matched).unwrap_or_default();
        let rest = delimiter.get(*matched..).unwrap_or_default();
        let n = rest.len().min(input.len());
        if input.get(..n) == rest.get(..n) {
            if n == rest.len() {
                *matched = 0;
                return Ok((n, true));
            }
            *matched += n;
            return Ok((n, false));
        }
        emit(carried)?;
        *matched = 0;
    }
    if let Some(at) = memmem::find(input, delimiter) {
        emit(input.get(..at).unwrap_or_default())?;
        return Ok((at + delimiter.len(), true));
    }
    let tail = input
        .len()
        .saturating_sub(delimiter.len().saturating_sub(1));
    let keep = input
        .get(tail..)
        .and_then(|t| memchr::memrchr(b'\r', t))
        .map(|i| tail + i)
        .filter(|&at| input.get(at..).is_some_and(|s| delimiter.starts_with(s)))
        .map_or(0, |at| input.len() - at);
    let cut = input.len() - keep;
    emit(input.get(..cut).unwrap_or_default())?;
    *matched = keep;
    Ok((input.len(), false))
}

#[cfg(test)]
mod tests;
