//! Secrets must not reach logs, status reasons or error strings, even when the text comes from
//! somewhere we do not control (a Redis log line echoing its config, a driver error).

use std::fmt;

const MASK: &str = "<redacted>";

/// Replaces every known secret in a text with a mask.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(secret: &str) -> Self {
        let mut r = Redactor::default();
        r.add(secret);
        r
    }

    /// The secrets of a `redis://user:password@host` URL: the whole URL, the password as
    /// written and percent-decoded (the form the server and its error messages see).
    pub(crate) fn for_url(url: &str) -> Self {
        let mut r = Redactor::default();
        r.add(url);
        if let Some(password) = url_password(url) {
            r.add(password);
            let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
            r.add(&decoded);
        }
        r
    }

    fn add(&mut self, secret: &str) {
        // Masking very short strings would shred innocent text and hide nothing worth hiding.
        if secret.len() >= 4 && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_owned());
            // Longest first, so a URL is masked whole before its password is.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// The password part of `scheme://[user]:password@host...`, as written.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_password_in_all_forms() {
        let r = Redactor::for_url("redis://user:p%40ss-word@host:6379/0");
        assert_eq!(r.redact("AUTH p@ss-word failed"), "AUTH <redacted> failed");
        assert_eq!(r.redact("x p%40ss-word y"), "x <redacted> y");
        assert_eq!(r.redact("url redis://user:p%40ss-word@host:6379/0 bad"), "url <redacted> bad");
    }

    #[test]
    fn url_password_forms() {
        assert_eq!(url_password("redis://:secret@h:1"), Some("secret"));
        assert_eq!(url_password("rediss://u:secret@h:1/2?x=y"), Some("secret"));
        assert_eq!(url_password("redis://h:1"), None);
        assert_eq!(url_password("redis://u@h:1"), None);
    }

    #[test]
    fn plain_secret() {
        let r = Redactor::new("abcdef0123");
        assert_eq!(r.redact("line: requirepass abcdef0123"), "line: requirepass <redacted>");
        assert_eq!(format!("{r:?}"), "Redactor(1 secrets)");
    }
}
