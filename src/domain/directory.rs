//! What imd keeps of a directory user besides its email and name: the attributes imported at
//! just-in-time creation (and refreshed by directory sync).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectoryAttrs {
    pub display_name: Option<String>,
    pub login: Option<String>,
    pub upn: Option<String>,
    pub dn: Option<String>,
    pub department: Option<String>,
    pub country: Option<String>,
    /// Direct and nested group DNs.
    pub groups: Vec<String>,
}
