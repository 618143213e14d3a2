//! IMD v4: the device map. A device is matched by a pending mapping for one of its identifiers;
//! the mapping names the user (created just in time with the organization's defaults). Needs no
//! network, so all of it happens in the write transaction.

use futures_util::future::BoxFuture;

use super::{Binding, Prepared, Resolution, ResolveContext, ResolveError, Resolver, UserSpec};
use crate::domain::{Email, RestoreData};
use crate::store::WriteTx;

#[derive(Debug, Default)]
pub struct DeviceMapResolver;

impl DeviceMapResolver {
    pub fn new() -> Self {
        DeviceMapResolver
    }
}

impl Resolver for DeviceMapResolver {
    fn name(&self) -> &'static str {
        "device_map"
    }

    fn resolve<'a>(
        &'a self,
        tx: &'a mut dyn WriteTx,
        ctx: &'a ResolveContext<'a>,
        _: &'a Prepared,
    ) -> BoxFuture<'a, Result<Resolution, ResolveError>> {
        Box::pin(async move {
            let Some(m) = tx.find_pending(&ctx.org.id, &ctx.request.ids).await? else {
                // A known device repeating needs no mapping; an unknown one does.
                return if ctx.existing.is_some() {
                    Ok(Resolution::Keep)
                } else {
                    Err(ResolveError::DeviceNotMapped)
                };
            };
            // The signed-in user must be the mapped one, or anyone holding the (widely shared)
            // token could claim a mapped laptop for themselves. The mapped user is not revealed.
            if !ctx.request.user.matches(&m.email_norm, &m.user_name) {
                return Err(ResolveError::UserNotMapped(
                    "this device is mapped to another user".into(),
                ));
            }
            let email = Email::parse(&m.email).map_err(|e| {
                ResolveError::UserNotMapped(format!("the mapping has an invalid email: {e}"))
            })?;
            Ok(Resolution::Bind(Box::new(Binding {
                user: UserSpec {
                    email,
                    user_name: m.user_name,
                    external_id: None,
                    source: "device_map",
                    profile: ctx.org.default_profile.clone(),
                    storage_region: ctx.org.default_storage_region.clone(),
                    quota_bytes: ctx.org.default_quota_bytes,
                    attrs: None,
                    mapping_id: None,
                    also_known_as: None,
                    reenable: false,
                },
                device_name: Some(m.device_name),
                mapping_id: Some(m.id),
                old_device_name: m.old_device_name,
                restore_data: m
                    .restore_data
                    .as_deref()
                    .and_then(|r| RestoreData::parse(r).ok()),
                note: None,
            })))
        })
    }
}
