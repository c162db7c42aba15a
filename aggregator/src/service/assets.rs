//! The dashboard's files, compiled into the binary (aggregator/assets/):
//! no build step, no framework, nothing fetched from elsewhere.

/// (URL path, content type, body).
pub(crate) const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../assets/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app.js"),
    ),
    (
        "/assets/chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/chart.js"),
    ),
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/style.css"),
    ),
];

/// The asset served at `path`, if any.
pub(crate) fn find(path: &str) -> Option<(&'static str, &'static str)> {
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, t, body)| (*t, *body))
}
