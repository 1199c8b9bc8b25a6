//! Keyset paging of an organization's listings (instances, API keys), so a listing costs the
//! same at ten thousand rows as at ten.
//!
//! A page is "up to `limit` rows whose id is greater than the cursor's, by id". Ids are UUID
//! v7 (see [`crate::ids`]), so id order is creation order, and an id never changes: a row
//! that exists during a whole walk is seen exactly once however many rows are created or
//! deleted meanwhile (a row deleted mid-walk may or may not have been seen; one created
//! mid-walk is seen if its id falls after the cursor). Offsets would skip or repeat rows when
//! an earlier one goes, and `(created_at, id)` would need a cursor of two values for the same
//! order.
//!
//! The cursor given to clients is the last id of a page, encoded as 22 base64url characters:
//! opaque on purpose, so that what it holds can change without breaking clients.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A page's size when the client names none.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest page a client may ask for.
pub const MAX_LIMIT: u32 = 1000;

/// Where the next page starts: after the row with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub uuid::Uuid);

impl Cursor {
    /// The text clients pass back as `after`.
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    /// The cursor `encode` made, or `None` for any other text.
    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        uuid::Uuid::from_slice(&bytes).ok().map(Cursor)
    }
}

/// Asks for one page: `limit` rows after `after` (from the start without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// One page, and the cursor of the next when there is more.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl PageRequest {
    /// How many rows to read from the store: one more than the page, so that a full last
    /// page is known to be the last (no empty page after it).
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// The page of `rows` (read with [`Self::fetch`], in id order); `at` gives a row's place.
    pub fn page<T>(&self, mut rows: Vec<T>, at: impl Fn(&T) -> Cursor) -> Page<T> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next = if more { rows.last().map(at) } else { None };
        Page { items: rows, next }
    }
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next: self.next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let c = Cursor(uuid::Uuid::now_v7());
        let text = c.encode();
        assert_eq!(text.len(), 22);
        assert_eq!(Cursor::decode(&text), Some(c));
        for bad in ["", "x", "not a cursor", &c.0.to_string(), &format!("{text}A"), &text[..21], "%%%%"] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_page_knows_whether_more_follow() {
        let ids: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
        let req = PageRequest { after: None, limit: 2 };
        assert_eq!(req.fetch(), 3);
        let p = req.page(ids[..3].to_vec(), |u| Cursor(*u));
        assert_eq!(p.items, ids[..2]);
        assert_eq!(p.next, Some(Cursor(ids[1])));
        let last = req.page(ids[..2].to_vec(), |u| Cursor(*u));
        assert_eq!((last.items.len(), last.next), (2, None));
        assert_eq!(req.page(Vec::new(), |u: &uuid::Uuid| Cursor(*u)).next, None);
    }
}
