//! Cursor pagination for list endpoints: `?limit=` (1..=1000, default 100) and an opaque
//! `?cursor=` taken from the previous page's `next_cursor`. Ids are time-ordered, so the cursor is
//! simply the last id seen.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::store::Page;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PageQuery {
    // A string: serde's `flatten` (used by the endpoints' query structs) hands numbers over as text.
    /// Page size, 1–1000 (default 100).
    #[schemars(with = "Option<u32>", range(min = 1, max = 1000))]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            Some(l) => l.trim().parse::<u32>().unwrap_or(0),
        };
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let after = match &self.cursor {
            None => None,
            Some(c) => {
                let raw = URL_SAFE_NO_PAD
                    .decode(c)
                    .map_err(|_| ApiError::invalid("malformed cursor"))?;
                Some(String::from_utf8(raw).map_err(|_| ApiError::invalid("malformed cursor"))?)
            }
        };
        Ok(Page { after, limit })
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "{T}Page", deny_unknown_fields)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The opaque cursor naming `last` (the last key of a page).
pub fn cursor_for(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last)
}

impl<T> Paged<T> {
    pub fn new(items: Vec<T>, page: &Page, id: impl Fn(&T) -> &str) -> Self {
        let next_cursor = if items.len() as u32 == page.limit {
            items.last().map(|l| URL_SAFE_NO_PAD.encode(id(l)))
        } else {
            None
        };
        Paged { items, next_cursor }
    }
}
