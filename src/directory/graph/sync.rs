//! The reads directory sync needs (docs/sync.md): a mapped group's transitive user members, the
//! users an attribute mapping's filter matches, and the users delta (§5–§7). One page per call,
//! so the caller bounds its memory and can persist where it is (a nextLink, a deltaLink)
//! between pages. Links are called exactly as Graph gave them (never rebuilt, never a `$select`
//! added) and only when they are under `{graph_url}/v1.0`, so the token goes nowhere else.

use serde_json::Value;
use tokio::time::Instant;

use super::{
    Call, GraphClient, GraphError, GraphUser, MAX_PAGE, MAX_PAGES, consent_hint, encode_query,
    encode_segment, is_extension_name, is_guid, parse_user, text, user_select,
};

/// One page of users and the link to the next page (`None`: last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<GraphUser>,
    pub next_link: Option<String>,
}

/// One page of a users delta round. A page carries `next_link` (more pages in this round) or
/// `delta_link` (the round is done: store it for the next one), never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPage {
    /// Changed or new users (not removed). The same user may come more than once in a round.
    pub users: Vec<GraphUser>,
    /// `@removed` entries.
    pub removed: Vec<Removed>,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
}

/// A user delta says is gone (`@removed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub id: String,
    /// `changed`: deleted but restorable (soft delete); `deleted`: permanently deleted.
    pub reason: String,
}

const MEMBERS: Call = Call {
    what: "read group members",
    permission: "GroupMember.Read.All",
    // "OData cast with another query parameter" is an advanced query on the advanced-queries
    // page (§4): sent as one it works whichever reading of the docs holds. The index behind
    // it may lag a little, which a periodic sync tolerates.
    advanced: true,
    delta: false,
};

const DELTA: Call = Call {
    what: "read users delta",
    permission: "User.Read.All",
    advanced: false,
    delta: true,
};

impl GraphClient {
    /// Transitive user members of a group (nested groups expanded), one page:
    /// `/groups/{id}/transitiveMembers/microsoft.graph.user` with `$select` = `USER_SELECT`
    /// plus `extensions` and `$top=999`. `next_link`: the previous page's, to continue (pass
    /// the same `extensions`: they name what to read from the page). A group that does not
    /// exist is an error, never an empty page: a deleted or mistyped group must not look like
    /// a group whose members all left.
    pub async fn group_members_page(
        &self,
        group_id: &str,
        extensions: &[String],
        next_link: Option<&str>,
        deadline: Instant,
    ) -> Result<UserPage, GraphError> {
        let group_id = group_id.trim();
        if !is_guid(group_id) {
            return Err(GraphError::BadRequest(format!(
                "group id {group_id:?} is not a GUID (the group's Object ID)"
            )));
        }
        let url = match next_link {
            Some(link) => self.given_link(link)?,
            None => format!(
                "{}/groups/{}/transitiveMembers/microsoft.graph.user?$select={}&$top={MAX_PAGE}&$count=true",
                self.base,
                encode_segment(group_id),
                user_select(extensions)?
            ),
        };
        let page = self
            .get_json(&url, MEMBERS, deadline)
            .await?
            .ok_or_else(|| {
                GraphError::BadRequest(format!(
                    "{}: group {group_id} does not exist (404): fix or remove the mapping",
                    MEMBERS.what
                ))
            })?;
        let mut users = Vec::new();
        for item in items(&page) {
            if item
                .get("@odata.type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "#microsoft.graph.user")
            {
                continue;
            }
            // Limited information (§4): only `@odata.type` and `id` when the app may not read
            // users. Parsed as is, every member would look disabled and be preserved.
            if text(item, "userPrincipalName").is_none()
                && item
                    .get("accountEnabled")
                    .and_then(Value::as_bool)
                    .is_none()
            {
                return Err(GraphError::Forbidden(format!(
                    "group members are returned without their properties (user {}): the application permission User.Read.All is not granted or not admin-consented; {}",
                    text(item, "id").unwrap_or_default(),
                    consent_hint("User.Read.All")
                )));
            }
            users.push(parse_user(item, extensions)?);
        }
        Ok(UserPage {
            users,
            next_link: self.returned_link(&page, "@odata.nextLink")?,
        })
    }

    /// Users matching an OData `filter` (all users when `None`), one page:
    /// `/users?$filter=…&$select=…&$top=999`. Build literals with `odata_string`, e.g.
    /// `department eq 'Sales'`. A filter is always sent as an advanced query
    /// (`ConsistencyLevel: eventual` + `$count=true`, §5): some properties and operators need
    /// it (§6) and the rest accept it, so no table of Graph's current rules is kept here. The
    /// header goes with every page, so pass the same `filter` (and `extensions`) with
    /// `next_link`.
    pub async fn users_page(
        &self,
        filter: Option<&str>,
        extensions: &[String],
        next_link: Option<&str>,
        deadline: Instant,
    ) -> Result<UserPage, GraphError> {
        let filter = filter.map(str::trim).filter(|f| !f.is_empty());
        let call = Call {
            what: "list users",
            permission: "User.Read.All",
            advanced: filter.is_some(),
            delta: false,
        };
        let url = match next_link {
            Some(link) => self.given_link(link)?,
            None => {
                let mut url = format!(
                    "{}/users?$select={}&$top={MAX_PAGE}",
                    self.base,
                    user_select(extensions)?
                );
                if let Some(f) = filter {
                    url.push_str(&format!("&$filter={}&$count=true", encode_query(f)));
                }
                url
            }
        };
        let page = self
            .get_json(&url, call, deadline)
            .await?
            .ok_or_else(|| GraphError::BadRequest(format!("{}: Graph answered 404", call.what)))?;
        let users = items(&page)
            .map(|u| parse_user(u, extensions))
            .collect::<Result<_, _>>()?;
        Ok(UserPage {
            users,
            next_link: self.returned_link(&page, "@odata.nextLink")?,
        })
    }

    /// A delta link that starts "from now" (`/users/delta?$deltatoken=latest` with the
    /// `$select`), following pages until a deltaLink. Take it *before* a full enumeration:
    /// changes made while the enumeration runs then come with the first delta round instead
    /// of being lost (the caller merges idempotently anyway).
    pub async fn delta_latest(
        &self,
        extensions: &[String],
        deadline: Instant,
    ) -> Result<String, GraphError> {
        let mut link = format!(
            "{}/users/delta?$deltatoken=latest&$select={}",
            self.base,
            user_select(extensions)?
        );
        for _ in 0..MAX_PAGES {
            let page = self.delta_page(&link, deadline).await?;
            if let Some(delta) = page.delta_link {
                return Ok(delta);
            }
            // `delta_page` refuses a page with neither link.
            link = page.next_link.unwrap_or_default();
        }
        Err(GraphError::BadRequest(format!(
            "{}: no deltaLink after {MAX_PAGES} pages",
            DELTA.what
        )))
    }

    /// One page of a delta round. `link` is a stored deltaLink or the previous page's
    /// nextLink, called exactly as given: its `$select` is encoded in the token (adding one
    /// is refused, §7). An expired or reset token is `GraphError::DeltaExpired`.
    ///
    /// Users are parsed as everywhere else. Without `Prefer: return=minimal` (never sent)
    /// Graph returns every selected property that has a value, so a missing property means
    /// unset. `accountEnabled` is always set on a user; should it be missing anyway it reads
    /// as disabled, as in `parse_user`: nobody is enabled by omission.
    pub async fn delta_page(&self, link: &str, deadline: Instant) -> Result<DeltaPage, GraphError> {
        let url = self.given_link(link)?;
        let page = self
            .get_json(&url, DELTA, deadline)
            .await?
            .ok_or_else(|| GraphError::BadRequest(format!("{}: Graph answered 404", DELTA.what)))?;
        let mut users = Vec::new();
        let mut removed = Vec::new();
        for item in items(&page) {
            if let Some(r) = item.get("@removed") {
                removed.push(Removed {
                    id: text(item, "id").ok_or_else(|| {
                        GraphError::BadRequest(format!(
                            "{}: an @removed entry without an id",
                            DELTA.what
                        ))
                    })?,
                    // Always sent in practice; absent, claim the weaker of the two.
                    reason: text(r, "reason").unwrap_or_else(|| "changed".into()),
                });
            } else {
                // The extensions asked for are in the token, not here: take those present.
                let extensions: Vec<String> = item
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .filter(|k| is_extension_name(k))
                    .cloned()
                    .collect();
                users.push(parse_user(item, &extensions)?);
            }
        }
        let next_link = self.returned_link(&page, "@odata.nextLink")?;
        let delta_link = self.returned_link(&page, "@odata.deltaLink")?;
        if next_link.is_none() && delta_link.is_none() {
            // The caller would lose its place in the round.
            return Err(GraphError::BadRequest(format!(
                "{}: a page with neither @odata.nextLink nor @odata.deltaLink",
                DELTA.what
            )));
        }
        Ok(DeltaPage {
            users,
            removed,
            next_link,
            delta_link,
        })
    }

    /// A link the caller kept (maybe in the database): followed only under graph_url.
    fn given_link(&self, link: &str) -> Result<String, GraphError> {
        let link = link.trim();
        self.check_link(link, "the link to continue from is")?;
        Ok(link.to_string())
    }

    /// `@odata.nextLink` / `@odata.deltaLink` of a page, refused at once when it points
    /// outside graph_url (so it is never stored).
    fn returned_link(&self, page: &Value, key: &str) -> Result<Option<String>, GraphError> {
        match page.get(key).and_then(Value::as_str) {
            Some(link) => {
                self.check_link(link, &format!("Graph returned an {key}"))?;
                Ok(Some(link.to_string()))
            }
            None => Ok(None),
        }
    }
}

fn items(page: &Value) -> impl Iterator<Item = &Value> {
    page.get("value")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}
