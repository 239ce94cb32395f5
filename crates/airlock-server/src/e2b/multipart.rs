//! The `multipart/form-data` bodies of envd's `/files` uploads: each part
//! a file, its `filename` the target path (the SDKs send the field name
//! `file`). The whole body is in memory already (capped by `[files]
//! max_bytes`), so this only splits it.

/// One file of an upload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    /// The part's `filename` (the SDKs' target path), if any.
    pub filename: Option<String>,
    /// Its bytes.
    pub body: &'a [u8],
}

/// The boundary of a `Content-Type: multipart/form-data; boundary=...`.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let (essence, params) = content_type.split_once(';')?;
    if !essence.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The parts of `body`, split at `boundary`.
///
/// # Errors
/// What is malformed, for a 400.
pub(crate) fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let start = find(body, delimiter).ok_or("no multipart boundary in the body")?;
    let mut rest = &body[start + delimiter.len()..];
    let next_delimiter = [b"\r\n".as_slice(), delimiter].concat();
    let mut out = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a multipart boundary not followed by CRLF")?;
        let headers_end =
            find(rest, b"\r\n\r\n").ok_or("a multipart part without the end of its headers")?;
        let headers = std::str::from_utf8(&rest[..headers_end])
            .map_err(|_| "multipart part headers that are not UTF-8")?;
        let content = &rest[headers_end + 4..];
        let end = find(content, &next_delimiter)
            .ok_or("a multipart part without its closing boundary")?;
        out.push(Part {
            filename: filename(headers),
            body: &content[..end],
        });
        rest = &content[end + next_delimiter.len()..];
    }
}

/// The `filename` of a part's `Content-Disposition`.
fn filename(headers: &str) -> Option<String> {
    let disposition = headers.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(value)
    })?;
    disposition.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        (name.trim() == "filename").then(|| value.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boundary_comes_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"ab c\"").as_deref(),
            Some("ab c")
        );
        assert_eq!(boundary("application/json"), None);
    }

    #[test]
    fn each_part_gives_its_filename_and_bytes() {
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/a.txt\"\r\n\
Content-Type: text/plain\r\n\r\nhello\r\n--XY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n\
two\r\nlines\r\n--XY--\r\n";
        let parts = parts(body, "XY").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].filename.as_deref(), Some("/home/user/a.txt"));
        assert_eq!(parts[0].body, b"hello");
        assert_eq!(parts[1].body, b"two\r\nlines");
    }

    #[test]
    fn a_cut_body_is_refused() {
        assert!(parts(b"--XY\r\nContent-Disposition: form-data\r\n\r\nhello", "XY").is_err());
        assert!(parts(b"nothing", "XY").is_err());
    }
}
