//! The small branded pages the edge answers with itself (docs/contract.md §5 status
//! codes). Self-contained HTML, no external assets. Start at [`error_page`].

/// Reason phrase and a sentence for a person, per status the edge emits.
pub fn describe(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("Bad Request", "The request was malformed."),
        401 => ("Unauthorized", "This workspace session needs a valid token."),
        403 => ("Forbidden", "This page may not open a workspace session."),
        404 => ("Not Found", "No app is served at this address."),
        408 => ("Request Timeout", "The request took too long to arrive."),
        413 => (
            "Content Too Large",
            "The request body is larger than this edge accepts.",
        ),
        421 => ("Misdirected Request", "This host is not served here."),
        429 => ("Too Many Requests", "Too many connections from your address."),
        431 => ("Request Header Fields Too Large", "The request headers are too large."),
        502 => ("Bad Gateway", "The app's server did not answer properly."),
        503 => (
            "Service Unavailable",
            "No server can take this app right now. Try again shortly.",
        ),
        504 => ("Gateway Timeout", "The app's server took too long to answer."),
        508 => ("Loop Detected", "The request bounced between regions and was stopped."),
        _ => ("Error", "Something went wrong."),
    }
}

/// The HTML body for `status`, naming the request id for support.
pub fn error_page(status: u16, request_id: &str) -> String {
    let (phrase, sentence) = describe(status);
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status} {phrase} · edgeplane</title>\
<style>body{{font-family:system-ui,sans-serif;background:#0e1525;color:#f5f9fc;display:grid;place-items:center;min-height:90vh;margin:0}}\
main{{max-width:32rem;padding:2rem}}h1{{font-size:3rem;margin:0;color:#f26207}}small{{color:#9da2a6}}</style></head>\
<body><main><h1>{status}</h1><p><strong>{phrase}</strong>. {sentence}</p><small>edgeplane · request id {request_id}</small></main></body></html>\n"
    )
}
