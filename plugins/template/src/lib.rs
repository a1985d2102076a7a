//! A plugin template: copy this crate, rename it, list the hooks you implement in `HOOKS` and replace the
//! example logic. As written it denies subscriptions to the channels listed in its configuration and passes
//! everything else:
//!
//! ```toml
//! # <wasm file stem>.toml beside the .wasm, or [plugins.config.template] in Herald's configuration
//! blocked_channels = ["internal:*"]
//! ```
//!
//! Build: `cargo build --profile plugin --target wasm32-wasip2 -p herald-plugin-template` (or
//! `plugins/build`, which builds every plugin but does not deploy this template).

use herald_sdk::{Config, Hooks, Plugin, SubscribeRequest, SubscribeVerdict, codes, deny, pattern};

/// The plugin's configuration.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Channel patterns (`*` and `{user}` allowed) nobody may subscribe to.
    blocked_channels: Vec<String>,
}

/// The plugin: state built once per instance by `init`, reused by every call.
pub struct Template {
    settings: Settings,
}

impl Plugin for Template {
    const NAME: &'static str = "template";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::SUBSCRIBE;

    fn init(config: Config) -> Result<Self, String> {
        Ok(Self {
            settings: config.parse()?,
        })
    }

    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        let user = &request.client.user;
        if self
            .settings
            .blocked_channels
            .iter()
            .any(|p| pattern::matches(p, &request.channel, user))
        {
            return SubscribeVerdict::Deny(deny(codes::PERMISSION_DENIED, "permission denied"));
        }
        SubscribeVerdict::Pass
    }
}

herald_sdk::export!(Template);

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribe(plugin: &Template, channel: &str) -> SubscribeVerdict {
        plugin.on_subscribe(&SubscribeRequest::new(channel).user("42"))
    }

    #[test]
    fn blocks_configured_channels_and_passes_the_rest() {
        let plugin =
            Template::init(Config::from_json(r#"{"blocked_channels":["internal:*"]}"#).unwrap())
                .unwrap();
        assert_eq!(
            subscribe(&plugin, "internal:metrics"),
            SubscribeVerdict::Deny(deny(codes::PERMISSION_DENIED, "permission denied"))
        );
        assert_eq!(subscribe(&plugin, "chat:room"), SubscribeVerdict::Pass);
    }

    /// What Herald's load checks too: every hook implemented is listed in `HOOKS`.
    #[test]
    fn declares_every_hook_it_implements() {
        let plugin = Template::init(Config::from_json("").unwrap()).unwrap();
        assert_eq!(herald_sdk::check_hooks(&plugin), Ok(()));
    }

    #[test]
    fn rejects_unknown_configuration() {
        assert!(Template::init(Config::from_json(r#"{"blocked":[]}"#).unwrap()).is_err());
    }
}
