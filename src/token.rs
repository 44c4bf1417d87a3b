//! The Enectiva import token: where it comes from and how it is kept out of sight.
//!
//! SPEC §3 order: `$CREDENTIALS_DIRECTORY/enectiva-token` (systemd `LoadCredential=`), then
//! `api.token_file`, then `$ENECTIVA_TOKEN`. After a 401/403 the sender reads it again from the
//! same place, so fixing a `token_file` takes effect without a restart. The token's text never
//! leaves this module except into the `Authorization` header: [`Token`]'s `Debug` and `Display`
//! are redacted, no error message quotes it, and [`Token::redact`] takes it out of text that
//! came from elsewhere (an API answer that echoes it) before that text is logged or stored.

use std::borrow::Cow;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What [`Token::redact`] puts where the token was.
pub const REDACTED: &str = "[token]";

/// The systemd credential name (`LoadCredential=enectiva-token:…`).
pub const CREDENTIAL_NAME: &str = "enectiva-token";
/// The environment variable read last.
pub const ENV_VAR: &str = "ENECTIVA_TOKEN";

/// Where the token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/enectiva-token`.
    Credential(PathBuf),
    /// `api.token_file`.
    File(PathBuf),
    /// `$ENECTIVA_TOKEN`.
    Env,
}

/// The secret. Only [`Token::header_value`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Builds a token from text (trimmed); refuses empty text or characters not allowed in an
    /// HTTP header.
    pub fn new(text: &str) -> Result<Token, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError::Empty);
        }
        if t.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(TokenError::BadCharacters);
        }
        Ok(Token(t.to_string()))
    }

    /// A hash that tells two tokens apart without revealing either (kept in memory only, to
    /// notice a rotated token on reload).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut h);
        h.finish()
    }

    /// `text` with every occurrence of the token replaced by [`REDACTED`]: as is, and as it
    /// reads inside a JSON string (`"` and `\` escaped, `/` optionally as `\/`), since API
    /// answers are JSON. Borrows when there is nothing to replace.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let escaped = self.0.replace('\\', "\\\\").replace('"', "\\\"");
        let slashes = escaped.replace('/', "\\/");
        let mut out = Cow::Borrowed(text);
        for form in [self.0.as_str(), &escaped, &slashes] {
            if out.contains(form) {
                out = Cow::Owned(out.replace(form, REDACTED));
            }
        }
        out
    }

    /// `Bearer <token>`, for the `Authorization` header only.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why no token could be read. Never contains the token's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no API token: set up the systemd credential {CREDENTIAL_NAME}, api.token_file, or ${ENV_VAR}"
    )]
    NoSource,
    #[error("cannot read the token from {what}: {error}")]
    Unreadable { what: String, error: String },
    #[error("the token is empty")]
    Empty,
    #[error("the token contains spaces or control characters")]
    BadCharacters,
}

impl TokenSource {
    /// The first source that exists, in SPEC order. `credentials_dir` is
    /// `$CREDENTIALS_DIRECTORY` and `env_token_set` whether `$ENECTIVA_TOKEN` is set; both
    /// are parameters so the rule can be tested without touching the process environment.
    pub fn resolve_with(
        credentials_dir: Option<&Path>,
        token_file: Option<&Path>,
        env_token_set: bool,
    ) -> Option<TokenSource> {
        if let Some(dir) = credentials_dir {
            let p = dir.join(CREDENTIAL_NAME);
            if p.exists() {
                return Some(TokenSource::Credential(p));
            }
        }
        if let Some(f) = token_file {
            return Some(TokenSource::File(f.to_path_buf()));
        }
        env_token_set.then_some(TokenSource::Env)
    }

    /// [`TokenSource::resolve_with`] on the real environment.
    pub fn resolve(token_file: Option<&Path>) -> Option<TokenSource> {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let env_set = std::env::var_os(ENV_VAR).is_some_and(|v| !v.is_empty());
        TokenSource::resolve_with(creds.as_deref(), token_file, env_set)
    }

    /// Reads the token now.
    pub fn read(&self) -> Result<Token, TokenError> {
        match self {
            TokenSource::Credential(p) | TokenSource::File(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| TokenError::Unreadable {
                    what: self.describe(),
                    error: e.to_string(),
                })?;
                Token::new(&text)
            }
            TokenSource::Env => match std::env::var(ENV_VAR) {
                Ok(v) => Token::new(&v),
                Err(e) => Err(TokenError::Unreadable {
                    what: self.describe(),
                    error: e.to_string(),
                }),
            },
        }
    }

    /// Where the token comes from, for messages (never the token).
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Credential(p) => format!("systemd credential {}", p.display()),
            TokenSource::File(p) => format!("token_file {}", p.display()),
            TokenSource::Env => format!("${ENV_VAR}"),
        }
    }

    /// A token file that can be read by group or others.
    pub fn loose_permissions(&self) -> Option<LoosePermissions> {
        let TokenSource::File(p) = self else {
            return None;
        };
        let mode = std::fs::metadata(p).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| LoosePermissions {
            path: p.clone(),
            mode,
        })
    }

    /// A warning when a token file can be read by group or others.
    pub fn permission_warning(&self) -> Option<String> {
        self.loose_permissions().map(|l| l.to_string())
    }
}

/// A token file readable by group or others, and its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoosePermissions {
    pub path: PathBuf,
    pub mode: u32,
}

impl fmt::Display for LoosePermissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token_file {} is readable by group or others (mode {:o}); run: chmod 600 {}",
            self.path.display(),
            self.mode,
            self.path.display()
        )
    }
}

/// Says each loose token file once: the token is read again after every credential problem
/// (every minute while one lasts), and the same warning each time would drown the log.
#[derive(Debug, Default)]
pub struct PermissionWarnings {
    last: Option<LoosePermissions>,
}

impl PermissionWarnings {
    /// The warning to log now: the first time `source` is seen with a given loose mode. A
    /// file found tight again is forgotten, so loosening it later warns again.
    pub fn check(&mut self, source: &TokenSource) -> Option<String> {
        let Some(loose) = source.loose_permissions() else {
            self.last = None;
            return None;
        };
        if self.last.as_ref() == Some(&loose) {
            return None;
        }
        let warning = loose.to_string();
        self.last = Some(loose);
        Some(warning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_of_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tok");
        std::fs::write(&file, "abc\n").expect("write");
        // No credential file yet: token_file wins over the environment.
        assert_eq!(
            TokenSource::resolve_with(Some(dir.path()), Some(&file), true),
            Some(TokenSource::File(file.clone()))
        );
        std::fs::write(dir.path().join(CREDENTIAL_NAME), "cred").expect("write");
        assert_eq!(
            TokenSource::resolve_with(Some(dir.path()), Some(&file), true),
            Some(TokenSource::Credential(dir.path().join(CREDENTIAL_NAME)))
        );
        assert_eq!(
            TokenSource::resolve_with(None, None, true),
            Some(TokenSource::Env)
        );
        assert_eq!(TokenSource::resolve_with(None, None, false), None);
    }

    #[test]
    fn file_is_reread_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tok");
        std::fs::write(&file, "  first-token\n").expect("write");
        let src = TokenSource::File(file.clone());
        assert_eq!(
            src.read().expect("read").header_value(),
            "Bearer first-token"
        );
        std::fs::write(&file, "second\n").expect("write");
        assert_eq!(src.read().expect("read").header_value(), "Bearer second");
        std::fs::write(&file, "\n").expect("write");
        assert_eq!(src.read(), Err(TokenError::Empty));
        std::fs::write(&file, "has space").expect("write");
        assert_eq!(src.read(), Err(TokenError::BadCharacters));
        std::fs::remove_file(&file).expect("rm");
        let err = src.read().expect_err("missing");
        assert!(err.to_string().contains("token_file"), "{err}");
    }

    #[test]
    fn never_printed() {
        let t = Token::new("s3cr3t-value").expect("token");
        assert!(!format!("{t:?} {t}").contains("s3cr3t"));
        let err = Token::new("bad\u{7f}s3cr3t").expect_err("bad");
        assert!(!err.to_string().contains("s3cr3t"));
    }

    #[test]
    fn redacts_the_token_from_foreign_text() {
        let t = Token::new("s3cr3t-value").expect("token");
        let body =
            r#"{"errors":[{"detail":"bad token s3cr3t-value","meta":"Bearer s3cr3t-value"}]}"#;
        let r = t.redact(body);
        assert!(!r.contains("s3cr3t"), "{r}");
        assert_eq!(r.matches(REDACTED).count(), 2, "{r}");
        assert!(
            r.starts_with(r#"{"errors":[{"detail":"bad token [token]""#),
            "{r}"
        );
        assert!(matches!(
            t.redact("nothing here"),
            Cow::Borrowed("nothing here")
        ));
        // Inside a JSON string a token's quote, backslash or slash may be escaped.
        let odd = Token::new(r#"a"b\c/d"#).expect("token");
        let json = serde_json::json!({ "detail": r#"echo a"b\c/d"# }).to_string();
        assert!(json.contains(r#"a\"b\\c/d"#), "{json}");
        let r = odd.redact(&json);
        assert_eq!(r, r#"{"detail":"echo [token]"}"#);
        assert_eq!(odd.redact(r#"x a\"b\\c\/d y"#), "x [token] y");
        assert_eq!(odd.redact(r#"a"b\c/d"#), "[token]");
    }

    #[test]
    fn group_readable_file_warns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tok");
        std::fs::write(&file, "t").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let w = TokenSource::File(file.clone())
            .permission_warning()
            .expect("warning");
        assert!(w.contains("chmod 600"), "{w}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(TokenSource::File(file).permission_warning(), None);
    }

    #[test]
    fn a_loose_file_is_warned_about_once_per_path_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "t").expect("write");
        std::fs::write(&b, "t").expect("write");
        let (src_a, src_b) = (TokenSource::File(a.clone()), TokenSource::File(b.clone()));
        let mut w = PermissionWarnings::default();
        chmod(&a, 0o640);
        let first = w.check(&src_a).expect("warning");
        assert!(first.contains("mode 640"), "{first}");
        // Read again and again (an auth pause): quiet.
        for _ in 0..5 {
            assert_eq!(w.check(&src_a), None);
        }
        // Another mode, or another file: a new warning.
        chmod(&a, 0o644);
        assert!(w.check(&src_a).expect("warning").contains("mode 644"));
        assert_eq!(w.check(&src_a), None);
        chmod(&b, 0o604);
        assert!(w.check(&src_b).expect("warning").contains("mode 604"));
        assert_eq!(w.check(&src_b), None);
        // Fixed, then loosened again: warned again.
        chmod(&b, 0o600);
        assert_eq!(w.check(&src_b), None);
        chmod(&b, 0o604);
        assert!(w.check(&src_b).is_some());
        // Other sources never warn.
        assert_eq!(w.check(&TokenSource::Env), None);
    }
}
