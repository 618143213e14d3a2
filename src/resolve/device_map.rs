//! IMD v4: the device map. A device is matched by a pending mapping for one of its identifiers;
//! the mapping names the user (created just in time with the organization's defaults).

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Binding, Resolution, ResolveContext, ResolveError, Resolver, UserSpec};
use crate::domain::{Email, RestoreData};
use crate::store::Store;

pub struct DeviceMapResolver {
    store: Store,
}

impl DeviceMapResolver {
    pub fn new(store: Store) -> Self {
        DeviceMapResolver { store }
    }

    async fn run(&self, ctx: &ResolveContext<'_>) -> Result<Resolution, ResolveError> {
        let mapping = self
            .store
            .find_pending_mapping(&ctx.org.id, &ctx.request.ids)
            .await?;
        let Some(m) = mapping else {
            // A known device repeating needs no mapping; an unknown one does.
            return if ctx.existing.is_some() {
                Ok(Resolution::Keep)
            } else {
                Err(ResolveError::DeviceNotMapped)
            };
        };
        // The signed-in user must be the mapped one, or anyone holding the (widely shared) token
        // could claim a mapped laptop for themselves. A reassignment of a known device is the
        // mapping's decision and the new user is who signs in.
        if !ctx.request.user.matches(&m.email_norm, &m.user_name) {
            // The mapped user's name is not revealed to whoever holds the token.
            return Err(ResolveError::UserNotMapped(
                "this device is mapped to another user".into(),
            ));
        }
        let email = Email::parse(&m.email).map_err(|e| {
            ResolveError::UserNotMapped(format!("mapping has an invalid email: {e}"))
        })?;
        Ok(Resolution::Bind(Box::new(Binding {
            user: UserSpec {
                email,
                user_name: m.user_name.clone(),
                external_id: None,
                source: "device_map",
                profile: ctx.org.default_profile.clone(),
                storage_region: ctx.org.default_storage_region.clone(),
                quota_bytes: ctx.org.default_quota_bytes,
            },
            device_name: Some(m.device_name.clone()),
            mapping_id: Some(m.id.clone()),
            old_device_name: m.old_device_name.clone(),
            restore_data: m
                .restore_data
                .as_deref()
                .and_then(|r| RestoreData::parse(r).ok()),
        })))
    }
}

impl Resolver for DeviceMapResolver {
    fn resolve<'a>(
        &'a self,
        ctx: &'a ResolveContext<'a>,
    ) -> BoxFuture<'a, Result<Resolution, ResolveError>> {
        self.run(ctx).boxed()
    }
}
