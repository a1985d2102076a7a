//! # herald-sdk: write Herald plugins
//!
//! A Herald plugin is a WebAssembly component that Herald loads from its plugin folder and calls at the
//! decisions that differ per deployment: accepting a connection ([`Plugin::on_connect`]), a subscription
//! ([`Plugin::on_subscribe`]), filtering, transforming or routing a publication ([`Plugin::on_publish`]),
//! answering an RPC ([`Plugin::on_rpc`]), allowing history and presence reads ([`Plugin::on_access`]) and
//! hearing about disconnects ([`Plugin::on_disconnect`]).
//!
//! A plugin is one `impl` of [`Plugin`] plus one [`export!`] line:
//!
//! ```
//! use herald_sdk::{Config, Hooks, Plugin, PublishRequest, PublishVerdict, deny};
//!
//! struct NoShouting;
//!
//! impl Plugin for NoShouting {
//!     const NAME: &'static str = "no-shouting";
//!     const VERSION: &'static str = "1.0.0";
//!     const HOOKS: Hooks = Hooks::PUBLISH;
//!
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(NoShouting)
//!     }
//!
//!     fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
//!         let text = String::from_utf8_lossy(&request.data);
//!         if text.chars().filter(|c| c.is_alphabetic()).all(char::is_uppercase) && text.len() > 10 {
//!             return PublishVerdict::Deny(deny(400, "no shouting"));
//!         }
//!         PublishVerdict::Pass
//!     }
//! }
//!
//! herald_sdk::export!(NoShouting);
//! ```
//!
//! Build it with `cargo build --profile plugin --target wasm32-wasip2` (or the `plugins/build` script) and
//! drop the `.wasm` into Herald's plugin folder. Plugin logic is plain Rust: [`log`] and [`now_ms`] fall back
//! to stderr and the system clock outside WebAssembly, so `cargo test` exercises it natively.
//!
//! ## Testing
//!
//! Unit-test a plugin natively by calling its hooks: requests have constructors and chainable setters with
//! plain defaults (see [`requests`]), and every request and verdict implements `PartialEq` and `Debug`, so a
//! test compares whole verdicts:
//!
//! ```
//! # use herald_sdk::{Config, Hooks, Plugin, PublishRequest, PublishVerdict, deny};
//! # struct NoShouting;
//! # impl Plugin for NoShouting {
//! #     const NAME: &'static str = "no-shouting";
//! #     const VERSION: &'static str = "1.0.0";
//! #     const HOOKS: Hooks = Hooks::PUBLISH;
//! #     fn init(_config: Config) -> Result<Self, String> { Ok(NoShouting) }
//! #     fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
//! #         let text = String::from_utf8_lossy(&request.data);
//! #         if text.chars().filter(|c| c.is_alphabetic()).all(char::is_uppercase) && text.len() > 10 {
//! #             return PublishVerdict::Deny(deny(400, "no shouting"));
//! #         }
//! #         PublishVerdict::Pass
//! #     }
//! # }
//! let plugin = NoShouting::init(Config::default()).unwrap();
//! let shout = PublishRequest::new("chat:room", "HELLO EVERYONE").user("42");
//! assert_eq!(plugin.on_publish(&shout), PublishVerdict::Deny(deny(400, "no shouting")));
//! let talk = PublishRequest::new("chat:room", "hello everyone").user("42");
//! assert_eq!(plugin.on_publish(&talk), PublishVerdict::Pass);
//! ```
//!
//! Herald calls only the hooks a plugin lists in [`Plugin::HOOKS`]; a hook implemented but not listed is
//! caught when Herald loads the plugin (its `init` fails, naming the hook), and [`check_hooks`] runs the same
//! check in a unit test.

#![warn(missing_docs)]

extern crate self as herald_sdk;

pub mod cluster_state;
pub mod http;
pub mod json;
#[cfg(not(target_arch = "wasm32"))]
mod native_store;
pub mod pattern;
pub mod requests;
pub mod state;

#[doc(hidden)]
pub mod bindings {
    // wit-bindgen gives every type `Debug` and `Clone`; `PartialEq` and `Eq` are added so a plugin's unit test
    // compares whole verdicts (`assert_eq!(verdict, SubscribeVerdict::Pass)`). Derives change no
    // component-model type: plugins built before and after stay interchangeable.
    wit_bindgen::generate!({
        path: "../wit",
        world: "herald:plugin/plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_guest",
        default_bindings_module: "herald_sdk::bindings",
        runtime_path: "herald_sdk::wit_bindgen::rt",
        generate_unused_types: true,
        additional_derives: [PartialEq, Eq],
    });
}

#[doc(hidden)]
pub use wit_bindgen;

pub use bindings::herald::plugin::host::Level;
pub use bindings::herald::plugin::types::{
    AccessKind, AccessRequest, AccessVerdict, ClientInfo, ConnectAllow, ConnectRequest,
    ConnectVerdict, Deny, DisconnectEvent, Hooks, PluginMetadata as Metadata, PublishRequest,
    PublishSource, PublishVerdict, Route, RpcRequest, RpcVerdict, SubscribeAllow, SubscribeRequest,
    SubscribeVerdict, Transform,
};

/// Well-known codes for [`deny`]. Below 3000 an error reply; 3000–4999 closes the connection.
pub mod codes {
    /// Error reply: internal error (temporary: clients retry).
    pub const INTERNAL: u32 = 100;
    /// Error reply: unauthorized.
    pub const UNAUTHORIZED: u32 = 101;
    /// Error reply: permission denied.
    pub const PERMISSION_DENIED: u32 = 103;
    /// Error reply: method not found (RPC).
    pub const METHOD_NOT_FOUND: u32 = 104;
    /// Error reply: bad request.
    pub const BAD_REQUEST: u32 = 107;
    /// Error reply: token expired — the SDKs fetch a new token and retry.
    pub const TOKEN_EXPIRED: u32 = 109;
    /// Error reply: too many requests (temporary: the SDKs may retry later).
    pub const TOO_MANY_REQUESTS: u32 = 111;
    /// Close: connection expired (reconnects with a new token).
    pub const CONNECTION_EXPIRED: u32 = 3005;
    /// Close: invalid token (terminal).
    pub const INVALID_TOKEN: u32 = 3500;
    /// Close: permission denied (terminal).
    pub const DISCONNECT_PERMISSION_DENIED: u32 = 3507;
}

/// A publication source as plugin configurations name it: `"client"`, `"api"` or `"queue"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceName {
    /// A client's publish command.
    Client,
    /// The HTTP server API.
    Api,
    /// A message queue.
    Queue,
}

impl From<SourceName> for PublishSource {
    fn from(source: SourceName) -> Self {
        match source {
            SourceName::Client => PublishSource::Client,
            SourceName::Api => PublishSource::Api,
            SourceName::Queue => PublishSource::Queue,
        }
    }
}

/// A refusal with a code and a short reason (see [`codes`]).
pub fn deny(code: u32, reason: impl Into<String>) -> Deny {
    Deny {
        code,
        reason: reason.into(),
    }
}

/// A plugin's configuration: the table `[plugins.<name>.config]` of Herald's configuration, or the
/// `<file>.toml` beside the plugin, as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config(pub serde_json::Value);

impl Config {
    /// Parses configuration text (JSON; an empty string is an empty object).
    pub fn from_json(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self(serde_json::Value::Object(Default::default())));
        }
        serde_json::from_str(text)
            .map(Self)
            .map_err(|e| format!("configuration is not JSON: {e}"))
    }

    /// Deserialises the whole configuration into `T`; the error names the problem for Herald's log.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.0.clone()).map_err(|e| format!("invalid configuration: {e}"))
    }
}

/// The plugin: implement the hooks you need (the others default to "pass") and list them in `HOOKS`.
///
/// Herald calls only the hooks listed in `HOOKS`, so a hook implemented but not listed would silently never
/// run. The SDK catches that when Herald loads the plugin: `init` fails with a message naming the hook
/// (see [`check_hooks`], which a unit test can call too).
///
/// Herald creates one value per instance with [`Plugin::init`] and keeps it for every call the instance
/// serves, so state built in `init` (parsed rules, keys) is reused. Hooks must be quick: each call has a
/// deadline (10 ms by default) and a plugin that exceeds it, panics or runs out of memory fails closed.
pub trait Plugin: Sized + 'static {
    /// The plugin's name; its configuration is looked up under it.
    const NAME: &'static str;
    /// The plugin's version, shown by `/api/plugins`.
    const VERSION: &'static str;
    /// The hooks Herald calls; a hook not listed here is never called. Every hook method the plugin
    /// implements must be listed, or loading fails (see [`check_hooks`]).
    const HOOKS: Hooks;

    /// Builds the plugin from its configuration; an error rejects the plugin (the old version keeps serving).
    fn init(config: Config) -> Result<Self, String>;

    /// A connection asks to be accepted (or, with `request.refresh`, to extend its expiry).
    fn on_connect(&self, request: &ConnectRequest) -> ConnectVerdict {
        let _ = request;
        __private::default_ran(Hooks::CONNECT);
        ConnectVerdict::Pass
    }

    /// A connection asks to subscribe (or, with `request.refresh`, to extend a subscription).
    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        let _ = request;
        __private::default_ran(Hooks::SUBSCRIBE);
        SubscribeVerdict::Pass
    }

    /// A publication is on its way into a channel (from a client, the API or a queue).
    fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
        let _ = request;
        __private::default_ran(Hooks::PUBLISH);
        PublishVerdict::Pass
    }

    /// A client calls a server method.
    fn on_rpc(&self, request: &RpcRequest) -> RpcVerdict {
        let _ = request;
        __private::default_ran(Hooks::RPC);
        RpcVerdict::Pass
    }

    /// A client reads a channel's history or presence.
    fn on_access(&self, request: &AccessRequest) -> AccessVerdict {
        let _ = request;
        __private::default_ran(Hooks::ACCESS);
        AccessVerdict::Pass
    }

    /// A connection ended.
    fn on_disconnect(&self, event: &DisconnectEvent) {
        let _ = event;
        __private::default_ran(Hooks::DISCONNECT);
    }
}

/// One hook: its flag, its method and a call of the method with a made-up request.
struct HookMethod<P> {
    flag: Hooks,
    flag_name: &'static str,
    method: &'static str,
    call: fn(&P),
}

fn hook_methods<P: Plugin>() -> [HookMethod<P>; 6] {
    [
        HookMethod {
            flag: Hooks::CONNECT,
            flag_name: "CONNECT",
            method: "on_connect",
            call: |p| {
                let _ = p.on_connect(&ConnectRequest::new());
            },
        },
        HookMethod {
            flag: Hooks::SUBSCRIBE,
            flag_name: "SUBSCRIBE",
            method: "on_subscribe",
            call: |p| {
                let _ = p.on_subscribe(&SubscribeRequest::new(""));
            },
        },
        HookMethod {
            flag: Hooks::PUBLISH,
            flag_name: "PUBLISH",
            method: "on_publish",
            call: |p| {
                let _ = p.on_publish(&PublishRequest::new("", ""));
            },
        },
        HookMethod {
            flag: Hooks::RPC,
            flag_name: "RPC",
            method: "on_rpc",
            call: |p| {
                let _ = p.on_rpc(&RpcRequest::new(""));
            },
        },
        HookMethod {
            flag: Hooks::ACCESS,
            flag_name: "ACCESS",
            method: "on_access",
            call: |p| {
                let _ = p.on_access(&AccessRequest::new("", AccessKind::History));
            },
        },
        HookMethod {
            flag: Hooks::DISCONNECT,
            flag_name: "DISCONNECT",
            method: "on_disconnect",
            call: |p| p.on_disconnect(&DisconnectEvent::new(0, "")),
        },
    ]
}

/// Checks that `plugin` declares in [`Plugin::HOOKS`] every hook method it implements. Herald calls only
/// declared hooks, so an undeclared one would silently never run; the SDK runs this check after
/// [`Plugin::init`] when Herald loads the plugin, and a failure rejects it with this message (for example
/// "plugin `acl` implements on_subscribe but does not declare Hooks::SUBSCRIBE in HOOKS: Herald would never
/// call it"). Call it in a unit test to find out before deploying.
///
/// How: Rust cannot ask whether a trait method was overridden, so each hook *not* declared is called once
/// with an empty request, and the trait's default body, which records that it ran, tells the two apart.
/// Declared hooks are never called, so a correct plugin runs none of its own code here and is never refused;
/// a wrong one runs its undeclared hook once (should that panic, the load fails with the panic instead).
pub fn check_hooks<P: Plugin>(plugin: &P) -> Result<(), String> {
    let undeclared: Vec<HookMethod<P>> = hook_methods::<P>()
        .into_iter()
        .filter(|hook| !P::HOOKS.contains(hook.flag))
        .filter(|hook| {
            __private::forget_default(hook.flag);
            (hook.call)(plugin);
            !__private::default_has_run(hook.flag)
        })
        .collect();
    if undeclared.is_empty() {
        return Ok(());
    }
    let methods: Vec<&str> = undeclared.iter().map(|hook| hook.method).collect();
    let flags: Vec<String> = undeclared
        .iter()
        .map(|hook| format!("Hooks::{}", hook.flag_name))
        .collect();
    Err(format!(
        "plugin `{}` implements {} but does not declare {} in HOOKS: Herald would never call {}",
        P::NAME,
        methods.join(" and "),
        flags.join(" | "),
        if undeclared.len() == 1 { "it" } else { "them" },
    ))
}

/// Writes a line to Herald's log, attributed to this plugin (stderr when running natively).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::herald::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Wall-clock time in milliseconds since the unix epoch (Herald's clock inside WebAssembly).
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return bindings::herald::plugin::host::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
}

/// Wall-clock time in whole seconds since the unix epoch.
pub fn now_seconds() -> u64 {
    now_ms() / 1000
}

#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::{Cell, RefCell};

    use super::{Config, Hooks, Metadata, Plugin};

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
        /// The hooks whose default (pass) body ran since [`forget_default`]: how [`super::check_hooks`]
        /// tells an implemented hook from one left to the trait.
        static DEFAULTS_RAN: Cell<Hooks> = const { Cell::new(Hooks::empty()) };
    }

    /// Called by the trait's default hook bodies.
    pub fn default_ran(hook: Hooks) {
        DEFAULTS_RAN.with(|ran| ran.set(ran.get() | hook));
    }

    pub(crate) fn forget_default(hook: Hooks) {
        DEFAULTS_RAN.with(|ran| ran.set(ran.get() - hook));
    }

    pub(crate) fn default_has_run(hook: Hooks) -> bool {
        DEFAULTS_RAN.with(|ran| ran.get().contains(hook))
    }

    pub fn metadata<P: Plugin>() -> Metadata {
        Metadata {
            name: P::NAME.into(),
            version: P::VERSION.into(),
            hooks: P::HOOKS,
        }
    }

    /// Builds the plugin, then refuses it if it implements a hook it does not declare: Herald logs the
    /// refusal and keeps the plugin's previous version (if any) serving.
    pub fn init<P: Plugin>(config: String) -> Result<(), String> {
        let plugin = P::init(Config::from_json(&config)?)?;
        super::check_hooks(&plugin)?;
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    /// Runs a hook on the initialised plugin. Herald always calls `init` first; a hook before it is a host
    /// bug and traps, which Herald treats as a failed (denied) decision.
    pub fn with<P: Plugin, R>(hook: impl FnOnce(&P) -> R) -> R {
        INSTANCE.with(|slot| {
            let slot = slot.borrow();
            let plugin = slot
                .as_ref()
                .and_then(|p| p.downcast_ref::<P>())
                .expect("hook called before init");
            hook(plugin)
        })
    }
}

/// Exports a [`Plugin`] implementation as the component's `guest` interface. Use once per plugin crate.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __HeraldGuest;

        impl $crate::bindings::exports::herald::plugin::guest::Guest for __HeraldGuest {
            fn metadata() -> $crate::Metadata {
                $crate::__private::metadata::<$plugin>()
            }
            fn init(config: String) -> Result<(), String> {
                $crate::__private::init::<$plugin>(config)
            }
            fn on_connect(request: $crate::ConnectRequest) -> $crate::ConnectVerdict {
                $crate::__private::with::<$plugin, _>(|p| $crate::Plugin::on_connect(p, &request))
            }
            fn on_subscribe(request: $crate::SubscribeRequest) -> $crate::SubscribeVerdict {
                $crate::__private::with::<$plugin, _>(|p| $crate::Plugin::on_subscribe(p, &request))
            }
            fn on_publish(request: $crate::PublishRequest) -> $crate::PublishVerdict {
                $crate::__private::with::<$plugin, _>(|p| $crate::Plugin::on_publish(p, &request))
            }
            fn on_rpc(request: $crate::RpcRequest) -> $crate::RpcVerdict {
                $crate::__private::with::<$plugin, _>(|p| $crate::Plugin::on_rpc(p, &request))
            }
            fn on_access(request: $crate::AccessRequest) -> $crate::AccessVerdict {
                $crate::__private::with::<$plugin, _>(|p| $crate::Plugin::on_access(p, &request))
            }
            fn on_disconnect(event: $crate::DisconnectEvent) {
                $crate::__private::with::<$plugin, _>(|p| $crate::Plugin::on_disconnect(p, &event))
            }
        }

        // Only a WebAssembly build exports the component's functions; native builds (unit tests) link as
        // ordinary libraries, whose linkers reject the component-model export names.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_guest!(__HeraldGuest with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparable<T: std::fmt::Debug + Clone + PartialEq + Eq>() {}

    /// Every type a hook takes or returns compares and prints, so plugin tests can `assert_eq!` them.
    #[test]
    fn hook_types_compare_and_print() {
        comparable::<ConnectVerdict>();
        comparable::<ConnectAllow>();
        comparable::<SubscribeVerdict>();
        comparable::<SubscribeAllow>();
        comparable::<PublishVerdict>();
        comparable::<Transform>();
        comparable::<Route>();
        comparable::<RpcVerdict>();
        comparable::<AccessVerdict>();
        comparable::<Deny>();
        comparable::<ClientInfo>();
        comparable::<ConnectRequest>();
        comparable::<SubscribeRequest>();
        comparable::<PublishRequest>();
        comparable::<RpcRequest>();
        comparable::<AccessRequest>();
        comparable::<DisconnectEvent>();
        comparable::<Metadata>();
        comparable::<Hooks>();

        assert_eq!(
            PublishVerdict::Deny(deny(400, "too large")),
            PublishVerdict::Deny(deny(400, "too large"))
        );
        assert_ne!(
            PublishVerdict::Deny(deny(400, "too large")),
            PublishVerdict::Deny(deny(400, "too small"))
        );
        assert_ne!(RpcVerdict::Reply(b"1".to_vec()), RpcVerdict::Pass);
        assert_eq!(
            format!("{:?}", SubscribeVerdict::Deny(deny(103, "no"))),
            r#"SubscribeVerdict::Deny(Deny { code: 103, reason: "no" })"#
        );
    }

    /// Implements subscribe and disconnect and declares both.
    struct Declared;

    impl Plugin for Declared {
        const NAME: &'static str = "declared";
        const VERSION: &'static str = "1";
        const HOOKS: Hooks = Hooks::SUBSCRIBE.union(Hooks::DISCONNECT);
        fn init(_config: Config) -> Result<Self, String> {
            Ok(Declared)
        }
        fn on_subscribe(&self, _request: &SubscribeRequest) -> SubscribeVerdict {
            SubscribeVerdict::Deny(deny(codes::PERMISSION_DENIED, "no"))
        }
        fn on_disconnect(&self, _event: &DisconnectEvent) {}
    }

    /// Implements publish and subscribe but declares only publish.
    struct Forgot;

    impl Plugin for Forgot {
        const NAME: &'static str = "forgot";
        const VERSION: &'static str = "1";
        const HOOKS: Hooks = Hooks::PUBLISH;
        fn init(_config: Config) -> Result<Self, String> {
            Ok(Forgot)
        }
        fn on_publish(&self, _request: &PublishRequest) -> PublishVerdict {
            PublishVerdict::Drop
        }
        fn on_subscribe(&self, _request: &SubscribeRequest) -> SubscribeVerdict {
            SubscribeVerdict::Pass
        }
    }

    /// Declares nothing; implements rpc (by calling the default access hook) and disconnect.
    struct ForgotTwo;

    impl Plugin for ForgotTwo {
        const NAME: &'static str = "forgot-two";
        const VERSION: &'static str = "1";
        const HOOKS: Hooks = Hooks::empty();
        fn init(_config: Config) -> Result<Self, String> {
            Ok(ForgotTwo)
        }
        fn on_rpc(&self, request: &RpcRequest) -> RpcVerdict {
            match self.on_access(&AccessRequest::new(&request.method, AccessKind::History)) {
                AccessVerdict::Pass => RpcVerdict::Pass,
                _ => RpcVerdict::Reply(b"{}".to_vec()),
            }
        }
        fn on_disconnect(&self, _event: &DisconnectEvent) {}
    }

    /// Declares every hook and implements none: harmless (each passes).
    struct DeclaresAll;

    impl Plugin for DeclaresAll {
        const NAME: &'static str = "declares-all";
        const VERSION: &'static str = "1";
        const HOOKS: Hooks = Hooks::all();
        fn init(_config: Config) -> Result<Self, String> {
            Ok(DeclaresAll)
        }
    }

    #[test]
    fn declared_hooks_pass_the_check() {
        assert_eq!(check_hooks(&Declared), Ok(()));
        assert_eq!(check_hooks(&DeclaresAll), Ok(()));
        assert_eq!(
            DeclaresAll.on_subscribe(&SubscribeRequest::new("a")),
            SubscribeVerdict::Pass
        );
    }

    #[test]
    fn an_implemented_hook_missing_from_hooks_is_named() {
        assert_eq!(
            check_hooks(&Forgot),
            Err(
                "plugin `forgot` implements on_subscribe but does not declare Hooks::SUBSCRIBE in \
                 HOOKS: Herald would never call it"
                    .into()
            )
        );
        // Several at once, and a hook that delegates to a default one still counts as implemented.
        assert_eq!(
            check_hooks(&ForgotTwo),
            Err(
                "plugin `forgot-two` implements on_rpc and on_disconnect but does not declare \
                 Hooks::RPC | Hooks::DISCONNECT in HOOKS: Herald would never call them"
                    .into()
            )
        );
    }

    /// The guest's `init` export (what Herald calls when it loads the plugin) runs the check.
    #[test]
    fn loading_refuses_a_plugin_with_an_undeclared_hook() {
        let error = __private::init::<Forgot>(String::new()).expect_err("refused");
        assert!(error.contains("on_subscribe"), "{error}");
        assert_eq!(__private::init::<Declared>("{}".into()), Ok(()));
        let verdict =
            __private::with::<Declared, _>(|p| p.on_subscribe(&SubscribeRequest::new("a")));
        assert_eq!(verdict, SubscribeVerdict::Deny(deny(103, "no")));
    }
}
