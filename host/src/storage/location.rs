//! A place the pipeline keeps data: a local directory or an object-store
//! URL.
//!
//! Guarantee: a location is exactly one of the two, decided from its text
//! alone. Text with `://` is a URL and must have a scheme sluice serves, a
//! bucket (or container) and no credentials or query in it; anything else
//! is a local path. A path whose first part ends in `:` (`s3:/lake`,
//! `abfss:lake`) is refused as a mistyped URL, so `s3://lake/t` with a
//! slash lost never becomes a local directory named `s3:`, and nothing
//! ever lands on local disk when the user meant a bucket.
//!
//! Credentials never go in the URL (they would reach every log line and
//! error that names the location): they come from the cloud's standard
//! chain or from `storage_options` (see `storage`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use url::Url;

/// The object-store families sluice serves, their URL schemes, and what
/// the first part of the URL names.
const FAMILIES: &[(&str, &[&str], &str)] = &[
    ("S3", &["s3", "s3a"], "bucket"),
    (
        "Azure",
        &["az", "azure", "abfs", "abfss", "adl"],
        "container",
    ),
    ("Google Cloud Storage", &["gs"], "bucket"),
];

/// Where a checkpoint or a table lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A local directory (from a plain path or a `file://` URL).
    Local(PathBuf),
    /// An object-store prefix: `s3://bucket/prefix`, `az://container/…`, …
    Remote(Url),
}

impl Location {
    /// Parse the text of a config value. The error says what is wrong and
    /// what to write instead; the caller names the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err(
                "is empty; write a local directory or an object-store URL such as s3://bucket/path"
                    .into(),
            );
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Self::parse_url(text, scheme);
        }
        // `s3:/lake/t`, `s3:lake`, `abfss:/…`: a URL with its `//` lost. A
        // first path part ending in `:`, or a known scheme and a colon.
        let first = text.split('/').next().unwrap_or_default();
        let scheme = text.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        let known = scheme.as_deref().is_some_and(|s| s == "file" || FAMILIES.iter().any(|(_, schemes, _)| schemes.contains(&s)));
        let mistyped = known || (first.len() > 2 && first.ends_with(':') && first[..first.len() - 1].chars().all(|c| c.is_ascii_alphanumeric()));
        if mistyped {
            let scheme = scheme.unwrap_or_default();
            return Err(format!(
                "`{}` looks like a mistyped URL (`{scheme}:` is not followed by `//`); write `{scheme}://…` for object \
                 storage, or `./{}` if you mean a local directory",
                shown(text),
                shown(text)
            ));
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    fn parse_url(text: &str, scheme: &str) -> Result<Self, String> {
        let url =
            Url::parse(text).map_err(|e| format!("`{}` is not a valid URL: {e}", shown(text)))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            let path = url.to_file_path().map_err(|()| {
                format!(
                    "`{}` is not a local file URL (file:///absolute/path)",
                    shown(text)
                )
            })?;
            return Ok(Location::Local(path));
        }
        let Some((family, _, part)) = FAMILIES
            .iter()
            .find(|(_, schemes, _)| schemes.contains(&scheme.as_str()))
        else {
            let served: Vec<String> = FAMILIES
                .iter()
                .flat_map(|(_, s, _)| s.iter().map(|s| format!("{s}://")))
                .collect();
            return Err(format!(
                "the URL scheme `{scheme}://` is not one sluice can serve; use {}, file:// or a local path",
                served.join(", ")
            ));
        };
        if !url.username().is_empty() && !matches!(scheme.as_str(), "abfs" | "abfss")
            || url.password().is_some()
        {
            return Err(format!(
                "`{scheme}://` URL carries credentials; put them in `storage_options` or the environment, never in the URL \
                 (it is shown in logs and errors)"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{scheme}://` URL has a query or fragment (a SAS token?); put credentials in `storage_options` or the \
                 environment, and write the URL as {scheme}://{part}/path"
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "`{}` names no {part}; write {scheme}://{part}/path ({family})",
                shown(text)
            ));
        }
        // One spelling per place: no trailing slash, so `s3://b/t` and
        // `s3://b/t/` compare equal.
        let mut url = url;
        let trimmed = url.path().trim_end_matches('/').to_owned();
        url.set_path(&trimmed);
        Ok(Location::Remote(url))
    }

    /// Whether the data is in an object store.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Remote(_))
    }

    /// The local directory, if it is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Remote(_) => None,
        }
    }

    /// Where it is, in words: "local disk" or the object-store family.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Local(_) => "local disk",
            Location::Remote(url) => FAMILIES
                .iter()
                .find(|(_, s, _)| s.contains(&url.scheme()))
                .map_or("object storage", |(f, _, _)| f),
        }
    }

    /// A place inside this one.
    pub fn join(&self, child: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(child)),
            Location::Remote(url) => {
                let mut url = url.clone();
                let path = format!(
                    "{}/{}",
                    url.path().trim_end_matches('/'),
                    child.trim_start_matches('/')
                );
                url.set_path(&path);
                Location::Remote(url)
            }
        }
    }

    /// Make a relative local path relative to `base` (the config file's
    /// directory). URLs are left alone.
    pub fn resolve(&mut self, base: &Path) {
        if let Location::Local(p) = self
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }

    /// The URL delta-rs and object_store take: the URL itself, or a
    /// `file://` URL of the absolute directory.
    pub fn url(&self) -> std::io::Result<Url> {
        match self {
            Location::Remote(url) => Ok(url.clone()),
            Location::Local(p) => {
                let abs = std::path::absolute(p)?;
                Url::from_directory_path(&abs).map_err(|()| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{} is not a usable directory", abs.display()),
                    )
                })
            }
        }
    }

    /// The parts that decide whether one location is inside another: the
    /// store (scheme family and bucket) and the path components, with `.`
    /// and `..` applied to local paths.
    pub fn parts(&self) -> (String, Vec<String>) {
        use std::path::Component;
        match self {
            Location::Local(p) => {
                let mut out: Vec<String> = Vec::new();
                for c in p.components() {
                    match c {
                        Component::CurDir => {}
                        Component::ParentDir if out.last().is_some_and(|l| l != "..") => {
                            out.pop();
                        }
                        c => out.push(c.as_os_str().to_string_lossy().into_owned()),
                    }
                }
                ("file".into(), out)
            }
            Location::Remote(url) => {
                let family = FAMILIES
                    .iter()
                    .find(|(_, s, _)| s.contains(&url.scheme()))
                    .map_or(url.scheme(), |(f, _, _)| f);
                let store = format!(
                    "{family}://{}@{}",
                    url.username(),
                    url.host_str().unwrap_or_default()
                );
                (
                    store,
                    url.path()
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            }
        }
    }
}

/// At most 200 characters of a value, for an error message.
fn shown(text: &str) -> String {
    text.chars()
        .take(200)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote(url) => write!(f, "{url}"),
        }
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Local(p)
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Local(p.to_owned())
    }
}

impl Serialize for Location {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Location::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_served_schemes_are_remote() {
        for (text, kind) in [
            ("s3://lake/tables/events", "S3"),
            ("s3a://lake/t", "S3"),
            ("az://container/t", "Azure"),
            ("abfss://lake@account.dfs.core.windows.net/t", "Azure"),
            ("gs://bucket/t", "Google Cloud Storage"),
        ] {
            let l = Location::parse(text).unwrap();
            assert!(l.is_remote(), "{text}");
            assert_eq!(l.kind(), kind);
            assert_eq!(l.to_string(), text);
        }
        assert_eq!(
            Location::parse("s3://lake/t/").unwrap(),
            Location::parse("s3://lake/t").unwrap()
        );
        assert_eq!(
            Location::parse("s3://lake/t")
                .unwrap()
                .join("offsets")
                .to_string(),
            "s3://lake/t/offsets"
        );
    }

    #[test]
    fn paths_and_file_urls_are_local() {
        assert_eq!(
            Location::parse("state/cp").unwrap(),
            Location::Local("state/cp".into())
        );
        assert_eq!(
            Location::parse("/abs/cp").unwrap(),
            Location::Local("/abs/cp".into())
        );
        assert_eq!(
            Location::parse("file:///abs/cp").unwrap(),
            Location::Local("/abs/cp".into())
        );
        assert_eq!(
            Location::parse("./s3:/x").unwrap(),
            Location::Local("./s3:/x".into())
        );
    }

    #[test]
    fn what_sluice_cannot_serve_is_refused_never_taken_as_a_path() {
        let e = Location::parse("hdfs://nn/t").unwrap_err();
        assert!(
            e.starts_with(
                "the URL scheme `hdfs://` is not one sluice can serve; use s3://, s3a://, az://"
            ),
            "{e}"
        );
        let e = Location::parse("s3:/lake/t").unwrap_err();
        assert!(e.contains("looks like a mistyped URL"), "{e}");
        let e = Location::parse("s3:lake").unwrap_err();
        assert!(e.contains("looks like a mistyped URL"), "{e}");
        let e = Location::parse("s3:///t").unwrap_err();
        assert!(e.contains("names no bucket"), "{e}");
        let e = Location::parse("s3://key:secret@lake/t").unwrap_err();
        assert!(
            e.contains("carries credentials") && !e.contains("secret@"),
            "{e}"
        );
        let e = Location::parse("az://c/t?sig=abc").unwrap_err();
        assert!(e.contains("query or fragment") && !e.contains("abc"), "{e}");
        let e = Location::parse("s3://la ke/t").unwrap_err();
        assert!(e.contains("is not a valid URL"), "{e}");
        assert!(Location::parse("").is_err());
    }

    #[test]
    fn parts_decide_nesting() {
        let (a_store, a) = Location::parse("s3://lake/t").unwrap().parts();
        let (b_store, b) = Location::parse("s3a://lake/t/inner").unwrap().parts();
        assert_eq!(a_store, b_store, "s3 and s3a are one store");
        assert!(b.starts_with(&a));
        let (c_store, _) = Location::parse("s3://other/t").unwrap().parts();
        assert_ne!(a_store, c_store);
        assert_eq!(Location::parse("a/./b/../c").unwrap().parts().1, ["a", "c"]);
    }
}
