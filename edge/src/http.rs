//! Response helpers: JSON bodies and the CORS headers every answer carries.
//! Write keys are public (they ship in web pages), so any origin may post;
//! the key, not the origin, decides the project.

use worker::{Response, Result};

pub fn json_response(status: u16, body: &str) -> Result<Response> {
    let mut resp = Response::ok(body)?.with_status(status);
    resp.headers_mut().set("Content-Type", "application/json")?;
    Ok(resp)
}

pub fn with_cors(mut resp: Response, origin: Option<&str>) -> Result<Response> {
    let h = resp.headers_mut();
    h.set("Access-Control-Allow-Origin", origin.unwrap_or("*"))?;
    h.set("Vary", "Origin")?;
    h.set("Access-Control-Allow-Methods", "POST, GET, OPTIONS")?;
    h.set(
        "Access-Control-Allow-Headers",
        "Content-Type, Content-Encoding, X-Spoor-Write-Key, X-Spoor-Ack, Authorization",
    )?;
    h.set(
        "Access-Control-Expose-Headers",
        "X-Spoor-Ack, X-Spoor-Ack-Ms, Retry-After",
    )?;
    h.set("Access-Control-Max-Age", "86400")?;
    Ok(resp)
}
