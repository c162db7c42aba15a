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
}
