//! How an image reference becomes a repository tag, and back.
//!
//! Tags live as symlinks under `streams/refs/oci/`, so a tag must be one path
//! component. Image references contain `/` and `:` (`docker://host:5000/a/b:t`,
//! `oci:/srv/layout:v1`), so we percent-encode `%` and `/` and prefix the
//! result with `bootc-`; tags without that prefix were made by other tools
//! and are left alone.

const PREFIX: &str = "bootc-";

/// The tag for the image reference `image`.
pub fn encode(image: &str) -> String {
    let mut out = String::with_capacity(PREFIX.len() + image.len());
    out.push_str(PREFIX);
    for c in image.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '@' => out.push_str("%40"),
            c => out.push(c),
        }
    }
    out
}

/// The image reference a tag was made from; `None` for tags bootc did not make.
pub fn decode(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix(PREFIX)?;
    let mut out = String::with_capacity(rest.len());
    let mut it = rest.split('%');
    out.push_str(it.next()?);
    for part in it {
        let (code, tail) = (part.get(..2)?, part.get(2..)?);
        out.push(match code {
            "25" => '%',
            "2F" => '/',
            "40" => '@',
            _ => return None,
        });
        out.push_str(tail);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for image in [
            "docker://127.0.0.1:5000/bootc/example:latest",
            "oci:/srv/layout:v1",
            "containers-storage:localhost/x:y",
            "weird%2F/name@sha256:abc",
            "",
        ] {
            let tag = encode(image);
            assert!(!tag.contains('/'), "{tag}");
            assert!(!tag.contains('@'), "{tag}");
            assert_eq!(decode(&tag).as_deref(), Some(image));
        }
    }

    #[test]
    fn foreign_and_malformed_tags() {
        assert_eq!(decode("myimage:latest"), None);
        assert_eq!(decode("bootc-a%2"), None);
        assert_eq!(decode("bootc-a%ZZb"), None);
    }
}
