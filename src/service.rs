//! The three 1Password event services, with every name the collector and
//! Devo know them by. One table, so paths, tags and scopes never drift apart.

use std::fmt;
use std::str::FromStr;

/// A 1Password Events API service, named as Devo's own collector names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Audit,
    ItemUsage,
    SignInAttempts,
}

/// Which generation of the Events API paths to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `/api/v1/...`: the paths Devo's own collector uses.
    V1,
    /// `/api/v2/...`: current; adds `account_uuid` and richer user objects.
    V2,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Audit, Service::ItemUsage, Service::SignInAttempts];

    /// The name used in config (`services`), reports and checkpoint keys.
    pub fn name(self) -> &'static str {
        match self {
            Service::Audit => "audit",
            Service::ItemUsage => "item_usage",
            Service::SignInAttempts => "sign_in_attempts",
        }
    }

    /// The last path segment of the endpoint, shared by v1 and v2.
    pub fn endpoint(self) -> &'static str {
        match self {
            Service::Audit => "auditevents",
            Service::ItemUsage => "itemusages",
            Service::SignInAttempts => "signinattempts",
        }
    }

    /// Path of the events endpoint for an API version, e.g. `/api/v2/auditevents`.
    pub fn path(self, version: ApiVersion) -> String {
        format!("/api/{}/{}", version.as_str(), self.endpoint())
    }

    /// The introspection `features` entry a token needs to read this service.
    pub fn feature(self) -> &'static str {
        self.endpoint()
    }

    /// The Devo tag Devo's own 1Password collector writes this service to.
    pub fn default_tag(self) -> &'static str {
        match self {
            Service::Audit => "auth.agilebits.onepassword.audit",
            Service::ItemUsage => "auth.agilebits.onepassword.itemusage",
            Service::SignInAttempts => "auth.agilebits.onepassword.signinattempt",
        }
    }

    /// The config key that overrides this service's tag.
    pub fn tag_key(self) -> &'static str {
        match self {
            Service::Audit => "tag_audit",
            Service::ItemUsage => "tag_item_usage",
            Service::SignInAttempts => "tag_sign_in_attempts",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Service {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Service::ALL.into_iter().find(|svc| svc.name() == s).ok_or(())
    }
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1",
            ApiVersion::V2 => "v2",
        }
    }

    /// Path of the token introspection endpoint for this version.
    pub fn introspect_path(self) -> &'static str {
        match self {
            ApiVersion::V1 => "/api/auth/introspect",
            ApiVersion::V2 => "/api/v2/auth/introspect",
        }
    }
}

impl FromStr for ApiVersion {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "v1" => Ok(ApiVersion::V1),
            "v2" => Ok(ApiVersion::V2),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_paths_follow_the_api() {
        for svc in Service::ALL {
            assert_eq!(svc.name().parse::<Service>(), Ok(svc));
        }
        assert_eq!("auditevents".parse::<Service>(), Err(()));
        assert_eq!(Service::ItemUsage.path(ApiVersion::V1), "/api/v1/itemusages");
        assert_eq!(Service::SignInAttempts.path(ApiVersion::V2), "/api/v2/signinattempts");
        assert_eq!(ApiVersion::V1.introspect_path(), "/api/auth/introspect");
        assert_eq!(Service::SignInAttempts.default_tag(), "auth.agilebits.onepassword.signinattempt");
    }
}
