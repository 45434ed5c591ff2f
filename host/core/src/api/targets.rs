//! Where the REST API lets a client put a savepoint: only under the
//! job's configured savepoint roots (the job file's `[savepoints] dir`,
//! plus any `weir run --savepoint-root`), on durable storage.
//!
//! A target is parsed into a scheme, an authority (an S3 bucket) and path
//! segments, and accepted only if its segments start with a root's —
//! compared segment by segment after normalisation, never as strings, so
//! `/data/sp` does not accept `/data/sp-evil`. `..` segments, %-escapes,
//! `memory://` and schemes other than the root's are refused. Pure: no
//! I/O, no storage handles (symbolic links inside a root are trusted, as
//! whoever can create them can write there anyway).

use std::path::{Component, Path};

/// Why a savepoint target is refused; each names the target and the
/// allowed roots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// A configured root cannot be parsed.
    #[error("savepoint root `{root}` is malformed: {why}")]
    BadRoot {
        /// The root as configured.
        root: String,
        /// What is wrong with it.
        why: String,
    },
    /// Neither the request nor the job names a savepoint directory.
    #[error(
        "no savepoint roots are configured for this job: set `[savepoints] dir` in the job \
         file or start it with `weir run --savepoint-root DIR`"
    )]
    NoRoots,
    /// The target is empty or cannot be parsed.
    #[error("savepoint target `{target}` is malformed: {why}; allowed roots: {roots}")]
    Malformed {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        why: String,
        /// The allowed roots, comma-separated.
        roots: String,
    },
    /// The target has a `..` segment.
    #[error(
        "savepoint target `{target}` has a `..` segment, which is never accepted; allowed \
         roots: {roots}"
    )]
    ParentSegment {
        /// The target as given.
        target: String,
        /// The allowed roots, comma-separated.
        roots: String,
    },
    /// The target is in memory: a savepoint there dies with the process.
    #[error(
        "savepoint target `{target}` is not durable (memory:// dies with the process): \
         savepoints and stops need durable storage; allowed roots: {roots}"
    )]
    NotDurable {
        /// The target as given (or the default root).
        target: String,
        /// The allowed roots, comma-separated.
        roots: String,
    },
    /// A tenant named a path or URL where only a name is accepted.
    #[error(
        "savepoint target `{target}` is not a name: give a name inside your savepoint \
         namespace (letters, digits, `.`, `-`, `_`, segments joined by `/`), never an absolute \
         path, a URL or `..`"
    )]
    NotAName {
        /// The target as given.
        target: String,
    },
    /// The target lies outside every root.
    #[error(
        "savepoint target `{target}` is outside the allowed savepoint roots ({roots}): give a \
         directory under one of them, or a relative path (resolved under {default})"
    )]
    Outside {
        /// The target as given.
        target: String,
        /// The allowed roots, comma-separated.
        roots: String,
        /// The default root, under which relative targets are resolved.
        default: String,
    },
}

/// The roots a job's savepoints may be written under; the first is the
/// default (where a request without a target goes, and what relative
/// targets are resolved under).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavepointRoots {
    roots: Vec<Location>,
    /// Only relative names under the one root are accepted (a tenant's
    /// namespace in `weir serve`), and messages never show the root.
    names_only: bool,
}

/// A parsed, normalised directory: `scheme://authority/segments` or, with
/// no scheme, the absolute local path `/segments`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    /// Lowercase; `None` for a plain local path.
    scheme: Option<String>,
    /// The bucket (or host) of a URL; empty for local paths and `file://`.
    authority: String,
    segments: Vec<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(scheme) = &self.scheme {
            write!(f, "{scheme}://{}", self.authority)?;
        }
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

impl Location {
    fn is_memory(&self) -> bool {
        self.scheme.as_deref() == Some("memory")
    }

    /// Whether `self` is `root` or lies under it.
    fn is_under(&self, root: &Location) -> bool {
        self.scheme == root.scheme
            && self.authority == root.authority
            && self.segments.starts_with(&root.segments)
    }
}

/// What parsing a root or target can find wrong.
enum ParseError {
    Malformed(String),
    Parent,
}

/// Splits a `/`-separated path into segments, dropping empty and `.` ones;
/// `..` is an error unless `resolve_parent` (roots from the operator's own
/// configuration may say `../savepoints`).
fn segments(path: &str, resolve_parent: bool) -> Result<Vec<String>, ParseError> {
    let mut out: Vec<String> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." if resolve_parent => {
                out.pop();
            }
            ".." => return Err(ParseError::Parent),
            s if s.contains('%') => {
                return Err(ParseError::Malformed(
                    "%-escapes are not accepted in savepoint directories".into(),
                ));
            }
            s if s.chars().any(char::is_control) => {
                return Err(ParseError::Malformed(
                    "it contains a control character".into(),
                ));
            }
            s => out.push(s.to_owned()),
        }
    }
    Ok(out)
}

/// Parses an absolute path or a `scheme://…` URL (`file://` takes only an
/// absolute path on the local host). Relative paths are the caller's.
fn parse_absolute(text: &str, resolve_parent: bool) -> Result<Location, ParseError> {
    if let Some((scheme, rest)) = text.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
        {
            return Err(ParseError::Malformed(format!("bad URL scheme `{scheme}`")));
        }
        let (authority, path) = if scheme == "file" {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(ParseError::Malformed(
                    "a file URL needs an absolute path, as in file:///var/weir".into(),
                ));
            }
            (String::new(), path)
        } else {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            if authority.is_empty() {
                return Err(ParseError::Malformed(format!(
                    "no bucket; expected {scheme}://BUCKET/PREFIX"
                )));
            }
            (authority.to_owned(), path)
        };
        return Ok(Location {
            scheme: Some(scheme),
            authority,
            segments: segments(path, resolve_parent)?,
        });
    }
    debug_assert!(text.starts_with('/'));
    Ok(Location {
        scheme: None,
        authority: String::new(),
        segments: segments(text, resolve_parent)?,
    })
}

impl SavepointRoots {
    /// No roots: every request is refused until the job names some.
    pub fn none() -> Self {
        SavepointRoots::default()
    }

    /// The roots `roots` (the default first), relative local paths resolved
    /// against `base_dir` (the job file's directory). `..` in a root is
    /// resolved, as the operator configured it.
    ///
    /// # Errors
    /// [`TargetError::BadRoot`] naming a root that cannot be parsed.
    pub fn new<'a>(
        roots: impl IntoIterator<Item = &'a str>,
        base_dir: &Path,
    ) -> Result<Self, TargetError> {
        let mut parsed: Vec<Location> = Vec::new();
        for root in roots {
            let text = root.trim();
            let location = if text.contains("://") || text.starts_with('/') {
                parse_absolute(text, true)
            } else {
                let joined = absolute_local(base_dir, text);
                parse_absolute(&joined, true)
            };
            let bad = |why: String| TargetError::BadRoot {
                root: root.to_owned(),
                why,
            };
            if text.is_empty() {
                return Err(bad("it is empty".into()));
            }
            let location = location.map_err(|e| match e {
                ParseError::Malformed(why) => bad(why),
                ParseError::Parent => bad("`..` left unresolved".into()),
            })?;
            if !parsed.contains(&location) {
                parsed.push(location);
            }
        }
        Ok(SavepointRoots {
            roots: parsed,
            names_only: false,
        })
    }

    /// Only names under `root` (an absolute path or URL the host chose):
    /// a tenant's savepoint namespace. Absolute paths, URLs, `..` and
    /// segments with other than letters, digits, `.`, `-` and `_` are
    /// refused, and messages never show the root.
    ///
    /// # Errors
    /// [`TargetError::BadRoot`] if `root` cannot be parsed.
    pub fn names_under(root: &str) -> Result<Self, TargetError> {
        let mut roots = Self::new([root], Path::new("/"))?;
        roots.names_only = true;
        Ok(roots)
    }

    /// Whether `name` is a name [`names_under`](Self::names_under)
    /// accepts: relative, `/`-separated segments of letters, digits, `.`,
    /// `-` and `_`, none of them `.` or `..`, at most 512 bytes.
    pub fn is_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 512
            && name.split('/').all(|s| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            })
    }

    /// The roots, as shown in messages: `a, b` or `(none)`.
    pub fn describe(&self) -> String {
        if self.roots.is_empty() {
            return "(none)".into();
        }
        self.roots
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where a savepoint asked for with `target` goes: the default root if
    /// `None`, a relative path under the default root, an absolute path or
    /// URL as given — each only if it is durable and under a root. The
    /// answer is normalised (absolute path or URL).
    ///
    /// # Errors
    /// A [`TargetError`] naming the target and the allowed roots.
    pub fn resolve(&self, target: Option<&str>) -> Result<String, TargetError> {
        let roots = self.describe();
        let Some(default) = self.roots.first() else {
            return Err(TargetError::NoRoots);
        };
        let given = target.unwrap_or_default().to_owned();
        if self.names_only {
            return match target {
                None => Ok(default.to_string()),
                Some(t) if Self::is_name(t) => {
                    let mut l = default.clone();
                    l.segments.extend(t.split('/').map(str::to_owned));
                    Ok(l.to_string())
                }
                Some(_) => Err(TargetError::NotAName { target: given }),
            };
        }
        let location = match target.map(str::trim) {
            None => default.clone(),
            Some("") => {
                return Err(TargetError::Malformed {
                    target: given,
                    why: "it is empty".into(),
                    roots,
                });
            }
            Some(t) => {
                let parsed = if t.contains("://") || t.starts_with('/') {
                    parse_absolute(t, false)
                } else {
                    segments(t, false).map(|rest| {
                        let mut l = default.clone();
                        l.segments.extend(rest);
                        l
                    })
                };
                match parsed {
                    Ok(l) => l,
                    Err(ParseError::Parent) => {
                        return Err(TargetError::ParentSegment {
                            target: given,
                            roots,
                        });
                    }
                    Err(ParseError::Malformed(why)) => {
                        return Err(TargetError::Malformed {
                            target: given,
                            why,
                            roots,
                        });
                    }
                }
            }
        };
        if location.is_memory() {
            return Err(TargetError::NotDurable {
                target: if target.is_some() {
                    given
                } else {
                    default.to_string()
                },
                roots,
            });
        }
        if !self.roots.iter().any(|r| location.is_under(r)) {
            return Err(TargetError::Outside {
                target: given,
                roots,
                default: default.to_string(),
            });
        }
        Ok(location.to_string())
    }
}

/// `path` made absolute against `base` (made absolute against the working
/// directory if it is relative itself), as text.
fn absolute_local(base: &Path, path: &str) -> String {
    let joined = base.join(path);
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    let mut out = String::new();
    for c in absolute.components() {
        match c {
            Component::Normal(s) => {
                out.push('/');
                out.push_str(&s.to_string_lossy());
            }
            Component::ParentDir => out.push_str("/.."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_names_its_savepoints_and_nothing_else() {
        let roots =
            SavepointRoots::names_under("s3://bucket/weir/tenants/acme/savepoints").unwrap();
        assert_eq!(
            roots.resolve(None).unwrap(),
            "s3://bucket/weir/tenants/acme/savepoints"
        );
        assert_eq!(
            roots.resolve(Some("nightly/v1.2")).unwrap(),
            "s3://bucket/weir/tenants/acme/savepoints/nightly/v1.2"
        );
        for bad in [
            "",
            "/tmp/x",
            "../globex/savepoints",
            "a/../../b",
            "s3://bucket/weir/tenants/acme/savepoints",
            "file:///tmp",
            "a//b",
            "./a",
            "a b",
            "%2e%2e",
            "a\\b",
        ] {
            let err = roots.resolve(Some(bad)).unwrap_err();
            assert!(matches!(err, TargetError::NotAName { .. }), "{bad}: {err}");
            // Only what the tenant wrote is shown, never the root.
            assert!(
                bad.contains("bucket") || !err.to_string().contains("bucket"),
                "{err}"
            );
        }
    }

    fn roots(list: &[&str]) -> SavepointRoots {
        SavepointRoots::new(list.iter().copied(), Path::new("/jobs/wc")).unwrap()
    }

    #[test]
    fn the_default_root_takes_requests_without_a_target_and_relative_ones() {
        let r = roots(&["savepoints", "/data/sp"]);
        assert_eq!(r.describe(), "/jobs/wc/savepoints, /data/sp");
        assert_eq!(r.resolve(None).unwrap(), "/jobs/wc/savepoints");
        assert_eq!(
            r.resolve(Some("nightly/./2024")).unwrap(),
            "/jobs/wc/savepoints/nightly/2024"
        );
        assert_eq!(r.resolve(Some("/data/sp")).unwrap(), "/data/sp");
        assert_eq!(r.resolve(Some("/data//sp/x/")).unwrap(), "/data/sp/x");
        let parent = roots(&["../shared/sp"]);
        assert_eq!(parent.resolve(None).unwrap(), "/jobs/shared/sp");
    }

    #[test]
    fn targets_outside_the_roots_are_refused_by_segment_not_by_prefix() {
        let r = roots(&["/data/sp"]);
        for outside in ["/data/sp-evil", "/data", "/tmp/evil", "/root/x", "/"] {
            let e = r.resolve(Some(outside)).unwrap_err();
            assert!(matches!(e, TargetError::Outside { .. }), "{outside}: {e:?}");
            let message = e.to_string();
            assert!(message.contains(outside), "{message}");
            assert!(message.contains("/data/sp"), "{message}");
        }
    }

    #[test]
    fn parent_segments_escapes_and_other_schemes_are_refused() {
        let r = roots(&["/data/sp"]);
        for parent in [
            "../../../../tmp/evil2",
            "/data/sp/../evil",
            "x/../../y",
            "s3://b/../x",
        ] {
            let e = r.resolve(Some(parent)).unwrap_err();
            assert!(
                matches!(e, TargetError::ParentSegment { .. }),
                "{parent}: {e:?}"
            );
        }
        for other in ["file:///data/sp/x", "s3://data/sp", "gs://b/data/sp"] {
            let e = r.resolve(Some(other)).unwrap_err();
            assert!(matches!(e, TargetError::Outside { .. }), "{other}: {e:?}");
        }
        for bad in ["/data/sp/%2e%2e/x", "", "  ", "://x", "s3:///x"] {
            let e = r.resolve(Some(bad)).unwrap_err();
            assert!(matches!(e, TargetError::Malformed { .. }), "{bad}: {e:?}");
        }
    }

    #[test]
    fn memory_is_never_a_target_even_as_a_root() {
        let r = roots(&["/data/sp"]);
        let e = r.resolve(Some("memory://x")).unwrap_err();
        assert!(matches!(e, TargetError::NotDurable { .. }), "{e:?}");
        assert!(e.to_string().contains("memory://x"), "{e}");
        let r = roots(&["memory://sp/a"]);
        for target in [None, Some("b"), Some("memory://sp/a/b")] {
            let e = r.resolve(target).unwrap_err();
            assert!(matches!(e, TargetError::NotDurable { .. }), "{e:?}");
        }
    }

    #[test]
    fn object_store_roots_compare_bucket_and_segments() {
        let r = roots(&["s3://bucket/sp", "S3://other"]);
        assert_eq!(r.resolve(None).unwrap(), "s3://bucket/sp");
        assert_eq!(r.resolve(Some("x/y")).unwrap(), "s3://bucket/sp/x/y");
        assert_eq!(
            r.resolve(Some("S3://bucket//sp/x")).unwrap(),
            "s3://bucket/sp/x"
        );
        assert_eq!(r.resolve(Some("s3://other/any")).unwrap(), "s3://other/any");
        for outside in [
            "s3://bucket/sp-evil",
            "s3://bucket",
            "s3://bucket2/sp",
            "/sp",
        ] {
            let e = r.resolve(Some(outside)).unwrap_err();
            assert!(matches!(e, TargetError::Outside { .. }), "{outside}: {e:?}");
        }
    }

    #[test]
    fn file_urls_are_their_own_scheme() {
        let r = roots(&["file:///data/sp"]);
        assert_eq!(r.resolve(None).unwrap(), "file:///data/sp");
        assert_eq!(
            r.resolve(Some("file://localhost/data/sp/x")).unwrap(),
            "file:///data/sp/x"
        );
        let e = r.resolve(Some("/data/sp/x")).unwrap_err();
        assert!(matches!(e, TargetError::Outside { .. }), "{e:?}");
    }

    #[test]
    fn without_roots_every_request_is_refused() {
        let r = SavepointRoots::none();
        assert_eq!(r.resolve(None).unwrap_err(), TargetError::NoRoots);
        assert_eq!(r.resolve(Some("/tmp/x")).unwrap_err(), TargetError::NoRoots);
    }
}
