//! The campaign of an event whose client sent none: the `utm_*` parameters
//! of its page URL (`context.page.url`), the way analytics.js fills
//! Segment's `context.campaign` from `location.search`.
//!
//! Spoor's web SDK sends the page URL with every event, so every event of a
//! page opened from a campaign link carries the campaign, with no code in
//! the SDK. A client that sends `context.campaign` itself (Segment's SDKs,
//! or Spoor's JSON with a `campaign` object) is taken at its word: the URL
//! is read only when all five fields are empty.
//!
//! Parameter names are matched ignoring ASCII case; the first occurrence of
//! a name wins; values are percent-decoded with `+` as a space, invalid
//! UTF-8 replaced and control characters dropped (an event is never
//! refused for what its URL says). Pure: no I/O.

use std::borrow::Cow;

use crate::event::CampaignRef;

/// The `utm_*` parameters of `url`'s query (between `?` and `#`), or `None`
/// when it has none.
pub fn from_url(url: &str) -> Option<CampaignRef<'static>> {
    let before_fragment = url.split('#').next().unwrap_or_default();
    let (_, query) = before_fragment.split_once('?')?;
    let mut campaign = CampaignRef::default();
    let mut found = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(name) = key
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("utm_"))
            .map(|_| &key[4..])
        else {
            continue;
        };
        let slot = if name.eq_ignore_ascii_case("source") {
            &mut campaign.source
        } else if name.eq_ignore_ascii_case("medium") {
            &mut campaign.medium
        } else if name.eq_ignore_ascii_case("campaign") {
            &mut campaign.name
        } else if name.eq_ignore_ascii_case("term") {
            &mut campaign.term
        } else if name.eq_ignore_ascii_case("content") {
            &mut campaign.content
        } else {
            continue;
        };
        if slot.is_empty() {
            let decoded = decode(value);
            if !decoded.is_empty() {
                *slot = Cow::Owned(decoded);
                found = true;
            }
        }
    }
    found.then_some(campaign)
}

/// Percent-decodes a query value (`+` is a space), lossily, without
/// control characters.
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out)
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_five_utm_parameters() {
        let c = from_url(
            "https://shop.example/sale?x=1&utm_source=newsletter&UTM_Medium=email\
             &utm_campaign=winter+sale&utm_term=boots%20%C3%A9t%C3%A9&utm_content=hero&utm_id=7#top",
        )
        .unwrap();
        assert_eq!(c.source, "newsletter");
        assert_eq!(c.medium, "email");
        assert_eq!(c.name, "winter sale");
        assert_eq!(c.term, "boots été");
        assert_eq!(c.content, "hero");
    }

    #[test]
    fn none_without_utm_parameters() {
        for url in [
            "",
            "https://shop.example/",
            "https://shop.example/?a=b",
            "https://shop.example/?utm_source=",
            "https://shop.example/#?utm_source=x",
            "https://shop.example/?utm_other=x",
        ] {
            assert_eq!(from_url(url), None, "{url}");
        }
    }

    #[test]
    fn the_first_value_wins_and_the_fragment_is_not_the_query() {
        let c = from_url("/p?utm_source=a&utm_source=b#utm_medium=c").unwrap();
        assert_eq!(c.source, "a");
        assert_eq!(c.medium, "");
    }

    #[test]
    fn bad_escapes_and_control_characters_do_not_fail() {
        let c = from_url("/p?utm_source=%zz%4&utm_medium=a%00b%0A&utm_campaign=%FF%FE").unwrap();
        assert_eq!(c.source, "%zz%4");
        assert_eq!(c.medium, "ab");
        assert_eq!(c.name, "\u{fffd}\u{fffd}");
        // Multi-byte text around the `utm_` prefix never splits a char.
        assert_eq!(from_url("/p?é=1&ut€=2&utm_€=3"), None);
    }
}
