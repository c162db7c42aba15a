//! Responses: every answer is built by one call into JavaScript
//! (`spoor_respond`), which creates the headers and the `Response` on the
//! JS side. Building it from Rust took a boundary crossing per header (the
//! CORS set alone was six), each copying two strings out of wasm memory;
//! in a V8 profile of the edge under load that was about a tenth of the
//! isolate's CPU.
//!
//! CORS: write keys are public (they ship in web pages), so any origin may
//! post; the key, not the origin, decides the project (`cors`).

use wasm_bindgen::prelude::wasm_bindgen;
use worker::web_sys;
use worker::Result;

#[wasm_bindgen(inline_js = r#"
export function spoor_respond(status, body, contentType, ack, ackMs, retryAfter) {
  const headers = {};
  if (contentType) headers["Content-Type"] = contentType;
  if (ack) headers["X-Spoor-Ack"] = ack;
  if (ackMs) headers["X-Spoor-Ack-Ms"] = ackMs;
  if (retryAfter) headers["Retry-After"] = retryAfter;
  return new Response(body, { status, headers });
}
export function spoor_cors(response, origin, preflight) {
  const h = response.headers;
  h.set("Access-Control-Allow-Origin", origin || "*");
  h.set("Vary", "Origin");
  if (preflight) {
    h.set("Access-Control-Allow-Methods", "POST, GET, OPTIONS");
    h.set("Access-Control-Allow-Headers", "Content-Type, Content-Encoding, X-Spoor-Write-Key, X-Spoor-Ack, Authorization");
    h.set("Access-Control-Max-Age", "86400");
  } else {
    h.set("Access-Control-Expose-Headers", "X-Spoor-Ack, X-Spoor-Ack-Ms, Retry-After");
  }
}
"#)]
extern "C" {
    #[wasm_bindgen(catch)]
    fn spoor_respond(
        status: u16,
        body: Option<&str>,
        content_type: &str,
        ack: &str,
        ack_ms: &str,
        retry_after: &str,
    ) -> std::result::Result<web_sys::Response, wasm_bindgen::JsValue>;

    #[wasm_bindgen(catch)]
    fn spoor_cors(
        response: &web_sys::Response,
        origin: &str,
        preflight: bool,
    ) -> std::result::Result<(), wasm_bindgen::JsValue>;
}

/// An answer's optional headers ("" leaves one out).
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    pub ack: &'a str,
    pub ack_ms: &'a str,
    pub retry_after: &'a str,
}

/// Any answer: status, body (none for 204), content type, extra headers.
pub fn respond(
    status: u16,
    body: Option<&str>,
    content_type: &str,
    extra: Extra<'_>,
) -> Result<web_sys::Response> {
    spoor_respond(
        status,
        body,
        content_type,
        extra.ack,
        extra.ack_ms,
        extra.retry_after,
    )
    .map_err(worker::Error::from)
}

pub fn json_response(status: u16, body: &str) -> Result<web_sys::Response> {
    respond(status, Some(body), "application/json", Extra::default())
}

/// CORS, as browsers need it: a preflight (`OPTIONS`) gets the allowed
/// origin, methods and headers; an answer to a request that carried an
/// `Origin` gets the allowed origin and the headers a page may read.
/// Requests without `Origin` (SDKs on servers and in apps) get none: no
/// client but a browser reads them, and each header costs the isolate.
pub fn cors(resp: &web_sys::Response, origin: Option<&str>, preflight: bool) -> Result<()> {
    if origin.is_some() || preflight {
        spoor_cors(resp, origin.unwrap_or(""), preflight).map_err(worker::Error::from)?;
    }
    Ok(())
}
