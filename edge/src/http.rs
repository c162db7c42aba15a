//! Responses: every answer is built by one call into JavaScript
//! (`spoor_respond`), which creates the headers and the `Response` on the
//! JS side. Building it from Rust took a boundary crossing per header (the
//! CORS set alone was six), each copying two strings out of wasm memory;
//! in a V8 profile of the edge under load those crossings alone were about
//! 5% of the isolate's samples.
//!
//! CORS: write keys are public (they ship in web pages), so any origin may
//! post; the key, not the origin, decides the project (`cors`).

use spoor_core::head::RequestHead;
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
let headNames = null, headList = null;
export function spoor_request_head(req, names) {
  if (names !== headNames) { headNames = names; headList = names.split(","); }
  const h = req.headers;
  const out = [req.method, req.url];
  for (const n of headList) { const v = h.get(n); out.push(v === null ? "\u0001" : v); }
  const cf = req.cf;
  out.push(cf ? JSON.stringify(cf) : "\u0001");
  return out.join("\u0000");
}
export async function spoor_link_call(env, binding, name, nameHeader, path, body) {
  const ns = env[binding];
  const stub = ns.get(ns.idFromName(name));
  const init = { method: body ? "POST" : "GET", headers: { [nameHeader]: name } };
  if (body) init.body = body.slice();
  const resp = await stub.fetch("https://link" + path, init);
  return [resp.status, await resp.text()];
}
export function spoor_cors(response, origin, allowHeaders) {
  const h = response.headers;
  h.set("Access-Control-Allow-Origin", origin || "*");
  h.set("Vary", "Origin");
  if (allowHeaders) {
    h.set("Access-Control-Allow-Methods", "POST, GET, OPTIONS");
    h.set("Access-Control-Allow-Headers", allowHeaders);
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

    fn spoor_request_head(req: &web_sys::Request, names: &js_sys::JsString) -> String;

    #[wasm_bindgen(catch)]
    fn spoor_link_call(
        env: &worker::Env,
        binding: &str,
        name: &str,
        name_header: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::result::Result<js_sys::Promise, wasm_bindgen::JsValue>;

    #[wasm_bindgen(catch)]
    fn spoor_cors(
        response: &web_sys::Response,
        origin: &str,
        allow_headers: &str,
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
        // A preflight names the allowed headers (core's list); other
        // answers pass "" and copy nothing across the boundary.
        let allow_headers = if preflight {
            spoor_core::head::CORS_ALLOW_HEADERS
        } else {
            ""
        };
        spoor_cors(resp, origin.unwrap_or(""), allow_headers).map_err(worker::Error::from)?;
    }
    Ok(())
}

/// Calls a link (the Durable Object `name` in namespace `binding`) at
/// `path`, POSTing `body` if there is one; answers its status and text.
/// One call into JavaScript: the namespace lookup, the object id, the
/// stub, the request and reading the answer happen on the JS side, where
/// each is a native call, instead of a boundary crossing apiece.
pub async fn link_call(
    env: &worker::Env,
    binding: &str,
    name: &str,
    name_header: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::result::Result<(u16, String), String> {
    let js_error = |e: wasm_bindgen::JsValue| {
        e.as_string()
            .or_else(|| {
                js_sys::Reflect::get(&e, &"message".into())
                    .ok()
                    .and_then(|m| m.as_string())
            })
            .unwrap_or_else(|| format!("{e:?}"))
    };
    let promise = spoor_link_call(env, binding, name, name_header, path, body).map_err(js_error)?;
    let answer = wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(js_error)?;
    let answer = js_sys::Array::from(&answer);
    let status = answer.get(0).as_f64().unwrap_or(0.0) as u16;
    let text = answer.get(1).as_string().unwrap_or_default();
    Ok((status, text))
}

/// Reads what the edge needs of a request besides its body in one call
/// into JavaScript (`spoor_core::head` says how the fields travel).
pub fn read_head(req: &worker::Request) -> RequestHead {
    thread_local! {
        // spoor_core::head::HEADERS, made a JS string once per isolate.
        static NAMES: js_sys::JsString =
            js_sys::JsString::from(spoor_core::head::HEADERS.join(",").as_str());
    }
    NAMES.with(|names| RequestHead::parse(&spoor_request_head(req.inner(), names)))
}
