//! Write keys: the map from a client's write key to its project id, and how a
//! key is read from request headers. Keys are configuration, passed in.

use std::collections::HashMap;

/// Write key → project id.
#[derive(Debug, Clone, Default)]
pub struct WriteKeys {
    keys: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteKeysError {
    #[error("WRITE_KEYS must be a JSON object of write key to project id: {0}")]
    Json(String),
    #[error("WRITE_KEYS entry {0:?} has an empty key or project id")]
    Empty(String),
}

impl WriteKeys {
    /// Parses `{"<write key>": "<project id>", ...}`.
    pub fn from_json(text: &str) -> Result<Self, WriteKeysError> {
        let keys: HashMap<String, String> =
            serde_json::from_str(text).map_err(|e| WriteKeysError::Json(e.to_string()))?;
        if let Some((k, _)) = keys
            .iter()
            .find(|(k, p)| k.trim().is_empty() || p.trim().is_empty())
        {
            return Err(WriteKeysError::Empty(k.clone()));
        }
        Ok(WriteKeys { keys })
    }

    pub fn project_for(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Extracts the write key from `X-Spoor-Write-Key: <key>` or
/// `Authorization: Bearer <key>`; the first wins.
pub fn write_key_from_headers<'a>(
    x_write_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(k) = x_write_key.map(str::trim).filter(|k| !k.is_empty()) {
        return Some(k);
    }
    let auth = authorization?.trim();
    let (scheme, rest) = auth.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim()).filter(|k| !k.is_empty())
    } else {
        None
    }
}

/// The write key of HTTP Basic auth, as Segment's SDKs send it: the key is
/// the user name (`Authorization: Basic base64("<key>:")`); the password
/// is ignored.
pub fn write_key_from_basic(authorization: Option<&str>) -> Option<String> {
    use base64::Engine as _;
    let (scheme, rest) = authorization?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let rest = rest.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(rest))
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let user = text
        .split_once(':')
        .map_or(text.as_str(), |(u, _)| u)
        .trim();
    Some(user.to_string()).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_projects() {
        let keys = WriteKeys::from_json(r#"{"wk_1":"shop","wk_2":"blog"}"#).unwrap();
        assert_eq!(keys.project_for("wk_1"), Some("shop"));
        assert_eq!(keys.project_for("nope"), None);
        assert!(WriteKeys::from_json("[]").is_err());
        assert_eq!(
            WriteKeys::from_json(r#"{"":"x"}"#).unwrap_err(),
            WriteKeysError::Empty(String::new())
        );
    }

    #[test]
    fn key_header_forms() {
        assert_eq!(write_key_from_headers(Some("k"), None), Some("k"));
        assert_eq!(write_key_from_headers(None, Some("Bearer k2")), Some("k2"));
        assert_eq!(
            write_key_from_headers(None, Some("bearer  k3 ")),
            Some("k3")
        );
        assert_eq!(write_key_from_headers(None, Some("Basic abc")), None);
        assert_eq!(write_key_from_headers(Some("  "), None), None);
    }

    #[test]
    fn basic_auth_user_is_the_key() {
        // base64("wk_seg:") and base64("wk_seg:ignored"), and unpadded.
        assert_eq!(
            write_key_from_basic(Some("Basic d2tfc2VnOg==")).as_deref(),
            Some("wk_seg")
        );
        assert_eq!(
            write_key_from_basic(Some("basic d2tfc2VnOmlnbm9yZWQ=")).as_deref(),
            Some("wk_seg")
        );
        assert_eq!(
            write_key_from_basic(Some("Basic d2tfc2VnOg")).as_deref(),
            Some("wk_seg")
        );
        // No colon: the whole text is the user name.
        assert_eq!(
            write_key_from_basic(Some("Basic d2tfc2Vn")).as_deref(),
            Some("wk_seg")
        );
        assert_eq!(write_key_from_basic(Some("Basic Og==")), None, "empty user");
        assert_eq!(write_key_from_basic(Some("Basic %%%")), None, "not base64");
        assert_eq!(write_key_from_basic(Some("Bearer d2tfc2VnOg==")), None);
        assert_eq!(write_key_from_basic(None), None);
    }
}
