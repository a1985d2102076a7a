//! Test fixture: declares only the publish hook but also implements subscribe, the mistake that would
//! otherwise go unnoticed (Herald calls only declared hooks). Loading it must fail with a message naming
//! `on_subscribe` and `Hooks::SUBSCRIBE`.

use herald_sdk::{
    Config, Hooks, Plugin, PublishRequest, PublishVerdict, SubscribeRequest, SubscribeVerdict,
    codes, deny,
};

/// The fixture.
pub struct Undeclared;

impl Plugin for Undeclared {
    const NAME: &'static str = "undeclared";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(_config: Config) -> Result<Self, String> {
        Ok(Undeclared)
    }

    fn on_publish(&self, _request: &PublishRequest) -> PublishVerdict {
        PublishVerdict::Pass
    }

    /// Never called by Herald: `HOOKS` does not list it.
    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        if request.channel.starts_with("secret:") {
            return SubscribeVerdict::Deny(deny(codes::PERMISSION_DENIED, "permission denied"));
        }
        SubscribeVerdict::Pass
    }
}

herald_sdk::export!(Undeclared);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_check_names_the_undeclared_hook() {
        let error = herald_sdk::check_hooks(&Undeclared).expect_err("undeclared hook");
        assert!(
            error.contains("implements on_subscribe but does not declare Hooks::SUBSCRIBE"),
            "{error}"
        );
    }
}
