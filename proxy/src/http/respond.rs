//! The edge's own answers: a small branded error page with the request id
//! (and `Retry-After` on 503), and the 308 to HTTPS.

use super::downstream::Downstream;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;

use super::ctx::Outcome;
use super::{error_page, Proxy, RequestCtx, REQUEST_ID_HEADER, ROUTE_HEADER};

impl Proxy {
    /// Writes one of the edge's own responses.
    pub(super) async fn respond<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        status: u16,
    ) -> Result<()> {
        let id = *ctx.request_id.get_or_insert_with(|| self.new_request_id());
        let body = error_page::error_page(status, id.as_str());
        let mut resp = ResponseHeader::build(status, Some(5))?;
        resp.insert_header("content-type", "text/html; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header(REQUEST_ID_HEADER, id.as_str())?;
        if let Some(r) = &ctx.debug_route {
            let _ = resp.insert_header(ROUTE_HEADER, r.as_str());
        }
        if status == 503 {
            resp.insert_header("retry-after", "5")?;
        }
        ctx.outcome = Outcome::Edge(status);
        session.write_response_header(Box::new(resp)).await?;
        session.write_response_body(Bytes::from(body), true).await?;
        Ok(())
    }

    /// Answers an ACME HTTP-01 challenge from the fleet's challenge table
    /// (the routing table's copy): the key authorization, else 404.
    pub(super) async fn answer_acme_challenge<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        token: &str,
    ) -> Result<()> {
        let table = self.shared.table.load_full();
        let Some(c) = table.acme_challenge(token, crate::clock::now_ms() as i64) else {
            return self.respond(session, ctx, 404).await;
        };
        self.shared.metrics.acme_challenges_served.inc();
        let body = Bytes::copy_from_slice(c.key_authorization.as_bytes());
        let mut resp = ResponseHeader::build(200, Some(3))?;
        resp.insert_header("content-type", "application/octet-stream")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        ctx.outcome = Outcome::Edge(200);
        session.write_response_header(Box::new(resp)).await?;
        session.write_response_body(body, true).await?;
        Ok(())
    }

    /// Answers a plain-HTTP request with 308 to the same URL on HTTPS.
    pub(super) async fn redirect_to_https<D: Downstream>(&self, session: &mut D, ctx: &mut RequestCtx) -> Result<()> {
        let host = ctx.head.host().unwrap_or_default();
        let target = session
            .req_header()
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let port = match self.https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let location = format!("https://{host}{port}{target}");
        let id = *ctx.request_id.get_or_insert_with(|| self.new_request_id());
        let mut resp = ResponseHeader::build(308, Some(4))?;
        resp.insert_header("location", location)?;
        resp.insert_header("content-length", "0")?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header(REQUEST_ID_HEADER, id.as_str())?;
        ctx.outcome = Outcome::Edge(308);
        session.write_response_header(Box::new(resp)).await?;
        session.finish_body().await?;
        Ok(())
    }
}
