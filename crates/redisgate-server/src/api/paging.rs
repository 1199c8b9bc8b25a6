//! Pages of an organization's listings (instances, API keys): their `limit` and `after`
//! query parameters, parsed here once for every listing route, and their answer — the same
//! JSON array the routes always gave, with an RFC 8288 `Link: <…?limit=N&after=CURSOR>;
//! rel="next"` header while more follows, so existing clients keep working and an
//! organization with ten thousand rows costs one bounded query per page. How a walk stays
//! stable while rows come and go is `redisgate_core::page`'s.
//!
//! The audit log keeps its own body (`{items, next}`) and cursor, but its `limit` is read by
//! [`limit`] too.

use axum::extract::{FromRequestParts, Query};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};
use redisgate_core::page::{Cursor, DEFAULT_LIMIT, MAX_LIMIT, Page, PageRequest};
use serde::Deserialize;

use super::{ApiError, ApiResult};

/// The query of a listing route.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// How many items per page: 1–1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: the `after` of the previous answer's `Link` header (`rel="next"`).
    /// Opaque: pass it back as it came.
    after: Option<String>,
}

/// `limit`: absent means `default`, else a number from 1 to `max`.
pub fn limit(raw: Option<&str>, default: u32, max: u32) -> ApiResult<u32> {
    match raw.map(str::parse::<u32>) {
        None => Ok(default),
        Some(Ok(n)) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation("limit", format!("must be between 1 and {max}"))),
    }
}

/// One page asked of a listing route, with the route's path for the next page's link.
pub struct PageQuery {
    request: PageRequest,
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for PageQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(params) = Query::<PageParams>::from_request_parts(parts, state).await?;
        let limit = limit(params.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
        let after = match params.after.as_deref() {
            None => None,
            Some(text) => Some(Cursor::decode(text).ok_or_else(|| {
                ApiError::validation("after", "is not a cursor of this listing's `Link` header")
            })?),
        };
        // The API's routes are merged, not nested: this is the path the client asked for.
        Ok(PageQuery { request: PageRequest { after, limit }, path: parts.uri.path().to_owned() })
    }
}

impl PageQuery {
    /// Where the page starts, for the store's `*_page` call.
    pub fn after(&self) -> Option<Cursor> {
        self.request.after
    }

    /// How many rows to ask the store for (see [`PageRequest::fetch`]).
    pub fn fetch(&self) -> u32 {
        self.request.fetch()
    }

    /// The answer for `rows` (the store's, in id order); `at` gives a row's place (its id).
    pub fn answer<T>(self, rows: Vec<T>, at: impl Fn(&T) -> Cursor) -> Paged<T> {
        Paged { page: self.request.page(rows, at), limit: self.request.limit, path: self.path }
    }
}

/// A page of a listing: a JSON array, and a `Link` header to the next page when there is one.
pub struct Paged<T> {
    page: Page<T>,
    limit: u32,
    path: String,
}

impl<T> Paged<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Paged<U> {
        Paged { page: self.page.map(f), limit: self.limit, path: self.path }
    }

    /// The `Link` header's value (a relative reference, RFC 8288), on every page but the last.
    fn link(&self) -> Option<String> {
        let next = self.page.next?;
        Some(format!("<{}?limit={}&after={}>; rel=\"next\"", self.path, self.limit, next.encode()))
    }
}

impl<T: serde::Serialize> IntoResponse for Paged<T> {
    fn into_response(self) -> Response {
        let link = self.link().and_then(|l| HeaderValue::from_str(&l).ok());
        let mut response = axum::Json(self.page.items).into_response();
        if let Some(link) = link {
            response.headers_mut().insert(header::LINK, link);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_counted_from_one_to_the_maximum() {
        assert_eq!(limit(None, 100, 1000).unwrap(), 100);
        assert_eq!(limit(Some("1"), 100, 1000).unwrap(), 1);
        assert_eq!(limit(Some("1000"), 100, 1000).unwrap(), 1000);
        for bad in ["0", "1001", "x", "", "-1", "1.5", "99999999999"] {
            let e = limit(Some(bad), 100, 1000).unwrap_err();
            assert!(matches!(&e, ApiError::Validation { field, .. } if field == "limit"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn only_a_page_with_more_after_it_links_the_next() {
        let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
        let query = || PageQuery {
            request: PageRequest { after: None, limit: 2 },
            path: "/api/organizations/o/api-keys".into(),
        };
        let first = query().answer(ids.clone(), |u| Cursor(*u));
        let cursor = Cursor(ids[1]).encode();
        assert_eq!(
            first.link().unwrap(),
            format!("</api/organizations/o/api-keys?limit=2&after={cursor}>; rel=\"next\"")
        );
        assert_eq!(query().answer(ids[..2].to_vec(), |u| Cursor(*u)).link(), None);
    }
}
