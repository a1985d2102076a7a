//! Chain semantics, apart from wasm: plugins run in file-name order; `deny` stops the chain; `allow`,
//! `transform` and `route` apply and the chain continues, so a later plugin can still deny; when every
//! plugin passes the caller's default (the namespace configuration) decides. A plugin call that fails is a
//! deny with an internal error (fail closed).

use super::bindings::{
    AccessVerdict, ConnectAllow, ConnectVerdict, Deny, PublishVerdict, RpcVerdict, SubscribeAllow,
    SubscribeVerdict,
};
use super::runtime::Failure;

/// Code for a failed plugin call on a command: error 100, temporary (clients retry).
pub const FAILED_CALL: u32 = 100;
/// Code for a failed plugin call on connect: close 3004 (internal server error, the client reconnects).
pub const FAILED_CONNECT: u32 = 3004;

fn failed(code: u32) -> Deny {
    Deny {
        code,
        reason: "internal server error".into(),
    }
}

/// The outcome of a chain whose verdicts can allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<A> {
    /// Every plugin passed: the configuration decides.
    Undecided,
    /// Allowed (by the last plugin that allowed) and nobody denied.
    Allowed(A),
    /// Denied.
    Denied(Deny),
}

/// The outcome of a publish chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishDecision {
    /// Publish `data` with `tags` to `channels`.
    Publish {
        /// The (possibly transformed) payload.
        data: Vec<u8>,
        /// The (possibly transformed) tags.
        tags: Vec<(String, String)>,
        /// Target channels (the original one unless routed).
        channels: Vec<String>,
    },
    /// Discard silently.
    Dropped,
    /// Refuse.
    Denied(Deny),
}

/// The outcome of an RPC chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcDecision {
    /// No plugin answered.
    Unanswered,
    /// The answer.
    Reply(Vec<u8>),
    /// Refused.
    Denied(Deny),
}

/// Applies one plugin's connect verdict; `Some` ends the chain with that decision.
pub fn connect_step(
    allowed: &mut Option<ConnectAllow>,
    verdict: Result<ConnectVerdict, Failure>,
) -> Option<Decision<ConnectAllow>> {
    match verdict {
        Ok(ConnectVerdict::Pass) => None,
        Ok(ConnectVerdict::Allow(allow)) => {
            *allowed = Some(match allowed.take() {
                // A later plugin refines the identity; what it leaves unset keeps what an earlier one gave.
                Some(earlier) => ConnectAllow {
                    user: allow.user,
                    info: allow.info.or(earlier.info),
                    channels: earlier.channels.into_iter().chain(allow.channels).collect(),
                    expire_at: allow.expire_at.or(earlier.expire_at),
                    data: allow.data.or(earlier.data),
                },
                None => allow,
            });
            None
        }
        Ok(ConnectVerdict::Deny(deny)) => Some(Decision::Denied(deny)),
        Err(_) => Some(Decision::Denied(failed(FAILED_CONNECT))),
    }
}

/// Applies one plugin's subscribe verdict; `Some` ends the chain.
pub fn subscribe_step(
    allowed: &mut Option<SubscribeAllow>,
    verdict: Result<SubscribeVerdict, Failure>,
) -> Option<Decision<SubscribeAllow>> {
    match verdict {
        Ok(SubscribeVerdict::Pass) => None,
        Ok(SubscribeVerdict::Allow(allow)) => {
            *allowed = Some(match allowed.take() {
                // An ACL's bare allow after a token plugin's allow keeps the token's info, data and expiry.
                Some(earlier) => SubscribeAllow {
                    info: allow.info.or(earlier.info),
                    data: allow.data.or(earlier.data),
                    expire_at: allow.expire_at.or(earlier.expire_at),
                },
                None => allow,
            });
            None
        }
        Ok(SubscribeVerdict::Deny(deny)) => Some(Decision::Denied(deny)),
        Err(_) => Some(Decision::Denied(failed(FAILED_CALL))),
    }
}

/// Applies one plugin's access verdict; `Some` ends the chain.
pub fn access_step(
    allowed: &mut Option<()>,
    verdict: Result<AccessVerdict, Failure>,
) -> Option<Decision<()>> {
    match verdict {
        Ok(AccessVerdict::Pass) => None,
        Ok(AccessVerdict::Allow) => {
            *allowed = Some(());
            None
        }
        Ok(AccessVerdict::Deny(deny)) => Some(Decision::Denied(deny)),
        Err(_) => Some(Decision::Denied(failed(FAILED_CALL))),
    }
}

/// The decision when the chain ran to its end.
pub fn finish<A>(allowed: Option<A>) -> Decision<A> {
    allowed.map_or(Decision::Undecided, Decision::Allowed)
}

/// The publication as it moves through the publish chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// Payload.
    pub data: Vec<u8>,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// The channel it was published to.
    pub channel: String,
    /// Where it goes: the original channel unless a plugin routed it.
    pub channels: Vec<String>,
}

impl Draft {
    /// A publication to `channel`, not yet touched by any plugin.
    pub fn new(channel: String, data: Vec<u8>, tags: Vec<(String, String)>) -> Self {
        Self {
            channels: vec![channel.clone()],
            data,
            tags,
            channel,
        }
    }

    /// The decision when every plugin has seen it.
    pub fn finish(self) -> PublishDecision {
        PublishDecision::Publish {
            data: self.data,
            tags: self.tags,
            channels: self.channels,
        }
    }
}

/// Applies one plugin's publish verdict to the draft (later plugins see the change); `Some` ends the
/// chain. A route replaces the target channels (keeping the original one if asked).
pub fn publish_step(
    draft: &mut Draft,
    verdict: Result<PublishVerdict, Failure>,
) -> Option<PublishDecision> {
    match verdict {
        Ok(PublishVerdict::Pass) => None,
        Ok(PublishVerdict::Transform(transform)) => {
            if let Some(data) = transform.data {
                draft.data = data;
            }
            if let Some(tags) = transform.tags {
                draft.tags = tags;
            }
            None
        }
        Ok(PublishVerdict::Route(route)) => {
            draft.channels = route.channels;
            if route.keep_original && !draft.channels.contains(&draft.channel) {
                draft.channels.insert(0, draft.channel.clone());
            }
            None
        }
        Ok(PublishVerdict::Drop) => Some(PublishDecision::Dropped),
        Ok(PublishVerdict::Deny(deny)) => Some(PublishDecision::Denied(deny)),
        Err(_) => Some(PublishDecision::Denied(failed(FAILED_CALL))),
    }
}

/// Applies one plugin's RPC verdict: the first reply answers; `Some` ends the chain.
pub fn rpc_step(verdict: Result<RpcVerdict, Failure>) -> Option<RpcDecision> {
    match verdict {
        Ok(RpcVerdict::Pass) => None,
        Ok(RpcVerdict::Reply(data)) => Some(RpcDecision::Reply(data)),
        Ok(RpcVerdict::Deny(deny)) => Some(RpcDecision::Denied(deny)),
        Err(_) => Some(RpcDecision::Denied(failed(FAILED_CALL))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bindings::{Route, Transform};
    use crate::plugin::runtime::FailureKind;

    fn deny(code: u32) -> Deny {
        Deny {
            code,
            reason: "no".into(),
        }
    }

    fn allow(user: &str) -> ConnectAllow {
        ConnectAllow {
            user: user.into(),
            info: None,
            channels: vec![],
            expire_at: None,
            data: None,
        }
    }

    /// Runs a connect chain over these verdicts; returns the decision and how many plugins were asked.
    fn connect(verdicts: Vec<Result<ConnectVerdict, Failure>>) -> (Decision<ConnectAllow>, usize) {
        let mut allowed = None;
        for (asked, verdict) in verdicts.into_iter().enumerate() {
            if let Some(decision) = connect_step(&mut allowed, verdict) {
                return (decision, asked + 1);
            }
        }
        (finish(allowed), usize::MAX)
    }

    fn publish(verdicts: Vec<Result<PublishVerdict, Failure>>) -> PublishDecision {
        let mut draft = Draft::new("orders".into(), b"1".to_vec(), vec![]);
        for verdict in verdicts {
            if let Some(decision) = publish_step(&mut draft, verdict) {
                return decision;
            }
        }
        draft.finish()
    }

    #[test]
    fn all_pass_leaves_the_decision_to_the_configuration() {
        assert_eq!(
            connect(vec![Ok(ConnectVerdict::Pass), Ok(ConnectVerdict::Pass)]).0,
            Decision::Undecided
        );
        assert_eq!(connect(vec![]).0, Decision::Undecided);
    }

    #[test]
    fn allow_continues_and_a_later_deny_wins() {
        let (decision, _) = connect(vec![
            Ok(ConnectVerdict::Allow(allow("a"))),
            Ok(ConnectVerdict::Deny(deny(3500))),
        ]);
        assert_eq!(decision, Decision::Denied(deny(3500)));
        let (decision, _) = connect(vec![
            Ok(ConnectVerdict::Allow(allow("a"))),
            Ok(ConnectVerdict::Pass),
            Ok(ConnectVerdict::Allow(allow("b"))),
        ]);
        assert_eq!(decision, Decision::Allowed(allow("b")));
    }

    #[test]
    fn later_allows_refine_earlier_ones() {
        let token = ConnectAllow {
            user: "42".into(),
            info: Some(b"{}".to_vec()),
            channels: vec!["a".into()],
            expire_at: Some(100),
            data: None,
        };
        let (decision, _) = connect(vec![
            Ok(ConnectVerdict::Allow(token)),
            Ok(ConnectVerdict::Allow(ConnectAllow {
                channels: vec!["b".into()],
                ..allow("42")
            })),
        ]);
        assert_eq!(
            decision,
            Decision::Allowed(ConnectAllow {
                user: "42".into(),
                info: Some(b"{}".to_vec()),
                channels: vec!["a".into(), "b".into()],
                expire_at: Some(100),
                data: None,
            })
        );
        let mut allowed = None;
        let grant = SubscribeAllow {
            info: Some(b"1".to_vec()),
            data: Some(b"2".to_vec()),
            expire_at: Some(7),
        };
        assert_eq!(
            subscribe_step(&mut allowed, Ok(SubscribeVerdict::Allow(grant.clone()))),
            None
        );
        let bare = SubscribeAllow {
            info: None,
            data: None,
            expire_at: None,
        };
        assert_eq!(
            subscribe_step(&mut allowed, Ok(SubscribeVerdict::Allow(bare))),
            None
        );
        assert_eq!(finish(allowed), Decision::Allowed(grant));
    }

    #[test]
    fn deny_stops_the_chain() {
        let (decision, asked) = connect(vec![
            Ok(ConnectVerdict::Deny(deny(3500))),
            Ok(ConnectVerdict::Allow(allow("a"))),
        ]);
        assert_eq!(decision, Decision::Denied(deny(3500)));
        assert_eq!(asked, 1);
        let mut allowed = None;
        assert_eq!(
            subscribe_step(&mut allowed, Ok(SubscribeVerdict::Deny(deny(103)))),
            Some(Decision::Denied(deny(103)))
        );
    }

    #[test]
    fn a_failed_call_fails_closed() {
        assert_eq!(
            connect(vec![Err(Failure::new(FailureKind::Trap, "trap"))]).0,
            Decision::Denied(failed(FAILED_CONNECT))
        );
        let mut allowed = Some(SubscribeAllow {
            info: None,
            data: None,
            expire_at: None,
        });
        assert_eq!(
            subscribe_step(
                &mut allowed,
                Err(Failure::new(FailureKind::Deadline, "deadline"))
            ),
            Some(Decision::Denied(failed(FAILED_CALL)))
        );
        assert_eq!(
            access_step(
                &mut Some(()),
                Err(Failure::new(FailureKind::MemoryLimit, "oom"))
            ),
            Some(Decision::Denied(failed(FAILED_CALL)))
        );
        assert_eq!(
            rpc_step(Err(Failure::new(FailureKind::MemoryLimit, "oom"))),
            Some(RpcDecision::Denied(failed(FAILED_CALL)))
        );
        assert_eq!(
            publish(vec![
                Ok(PublishVerdict::Pass),
                Err(Failure::new(FailureKind::Panic, "panic"))
            ]),
            PublishDecision::Denied(failed(FAILED_CALL))
        );
    }

    #[test]
    fn transforms_accumulate() {
        let decision = publish(vec![
            Ok(PublishVerdict::Transform(Transform {
                data: Some(b"2".to_vec()),
                tags: None,
            })),
            Ok(PublishVerdict::Transform(Transform {
                data: None,
                tags: Some(vec![("k".into(), "v".into())]),
            })),
            Ok(PublishVerdict::Pass),
        ]);
        assert_eq!(
            decision,
            PublishDecision::Publish {
                data: b"2".to_vec(),
                tags: vec![("k".into(), "v".into())],
                channels: vec!["orders".into()]
            }
        );
    }

    #[test]
    fn route_replaces_targets_and_can_keep_the_original() {
        let route = |keep| {
            Ok(PublishVerdict::Route(Route {
                channels: vec!["user:#42".into()],
                keep_original: keep,
            }))
        };
        match publish(vec![route(true)]) {
            PublishDecision::Publish { channels, .. } => {
                assert_eq!(channels, vec!["orders", "user:#42"])
            }
            other => panic!("{other:?}"),
        }
        match publish(vec![route(false)]) {
            PublishDecision::Publish { channels, .. } => assert_eq!(channels, vec!["user:#42"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            publish(vec![route(false), Ok(PublishVerdict::Deny(deny(103)))]),
            PublishDecision::Denied(deny(103))
        );
        assert_eq!(
            publish(vec![
                Ok(PublishVerdict::Drop),
                Ok(PublishVerdict::Deny(deny(103)))
            ]),
            PublishDecision::Dropped
        );
    }

    #[test]
    fn first_rpc_reply_answers() {
        assert_eq!(rpc_step(Ok(RpcVerdict::Pass)), None);
        assert_eq!(
            rpc_step(Ok(RpcVerdict::Reply(b"1".to_vec()))),
            Some(RpcDecision::Reply(b"1".to_vec()))
        );
    }
}
