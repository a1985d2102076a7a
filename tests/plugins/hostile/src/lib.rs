//! Test fixture: misbehaves when a publication's data (or a subscribed channel) names a misbehaviour, so one
//! build exercises every way a plugin can fail. `init` fails when the config says so.

use herald_sdk::{
    Config, ConnectRequest, ConnectVerdict, Hooks, Plugin, PublishRequest, PublishVerdict,
    SubscribeRequest, SubscribeVerdict, deny,
};

/// The fixture.
pub struct Hostile;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Settings {
    fail_init: bool,
}

/// Misbehaves as `what` says; returns normally for anything else. `panic:<text>` panics with a message
/// carrying `<text>`, so a caller can make every panic message different.
fn misbehave(what: &str) {
    if let Some(text) = what.strip_prefix("panic:") {
        panic!("hostile plugin panicked with {text}");
    }
    match what {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "panic" => panic!("hostile plugin panicked on purpose"),
        "oom" => {
            let big = vec![1u8; 1 << 30];
            std::hint::black_box(big);
        }
        "recursion" => {
            #[allow(unconditional_recursion)]
            fn deeper(depth: &mut [u8; 256]) -> u64 {
                let mut frame = *std::hint::black_box(depth);
                frame[0] = frame[0].wrapping_add(1);
                deeper(&mut frame) + 1
            }
            std::hint::black_box(deeper(&mut [0; 256]));
        }
        _ => {}
    }
}

impl Plugin for Hostile {
    const NAME: &'static str = "hostile";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: Hooks = Hooks::CONNECT.union(Hooks::SUBSCRIBE).union(Hooks::PUBLISH);

    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.fail_init {
            return Err("refusing to start: fail_init is set".into());
        }
        Ok(Hostile)
    }

    fn on_connect(&self, request: &ConnectRequest) -> ConnectVerdict {
        misbehave(&request.token);
        if request.token == "deny" {
            return ConnectVerdict::Deny(deny(3500, "denied by hostile"));
        }
        ConnectVerdict::Pass
    }

    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        misbehave(request.channel.rsplit(':').next().unwrap_or_default());
        SubscribeVerdict::Pass
    }

    fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
        let text = String::from_utf8_lossy(&request.data);
        misbehave(text.trim_matches('"'));
        PublishVerdict::Pass
    }
}

herald_sdk::export!(Hostile);
