//! The `[subscriptions]` configuration section.

use ds_protocol::NameLimits;
use serde::Deserialize;

/// Settings of the subscription engine (`[subscriptions]` in the server's TOML, `DS_SUBSCRIPTIONS__*`
/// in the environment).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionsConfig {
    /// Accept `http://localhost` and `http://127.0.0.x` webhook URLs (development and the
    /// conformance run). Production profiles leave this off: every webhook must then be an
    /// `https://` URL whose addresses are all public.
    pub allow_dev_webhooks: bool,
    /// The public URL of the stream root, e.g. `https://streams.example.com/v1/stream`. When set,
    /// `callback_url` and `jwks_url` are built from it; otherwise from the request's origin (see
    /// [`PublicOrigin`](crate::PublicOrigin)) and the path the router is mounted at. The server
    /// sets it from `http.public_url`; its own `[subscriptions] public_base_url` key is a
    /// deprecated alias.
    pub public_base_url: Option<String>,
    /// How long one webhook request may take (connect, TLS, response), in milliseconds.
    pub webhook_timeout_ms: u64,
    /// How long a DNS lookup of a webhook host may take when a subscription is created, in
    /// milliseconds. A lookup that fails or times out does not reject the URL: the addresses are
    /// checked again on every delivery.
    pub dns_timeout_ms: u64,
    /// Compact the state log once this many bytes of changes follow its last snapshot (or twice
    /// the snapshot's size, whichever is larger).
    pub state_compact_bytes: usize,
    /// Cluster mode only (a store several servers share, such as PostgreSQL): the ttl of the
    /// `subscriptions` lease that picks the one node deciding and delivering wakes, in
    /// milliseconds. The holder renews it every fifth of this and stops acting when a quarter of
    /// it is left without a successful renewal; another node takes over about this long after
    /// the holder died (at once after a graceful shutdown). At least 100.
    pub cluster_lease_ms: u64,
    /// Cluster mode only: how long a node that does not hold the lease waits for the holder to
    /// answer a subscription request it forwarded, in milliseconds, before answering `503`.
    pub cluster_call_timeout_ms: u64,
    /// Stream name limits applied to paths in subscription bodies (the server's
    /// `limits.max_stream_name_*`).
    #[serde(skip)]
    pub name_limits: NameLimits,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        SubscriptionsConfig {
            allow_dev_webhooks: false,
            public_base_url: None,
            webhook_timeout_ms: 10_000,
            dns_timeout_ms: 2_000,
            state_compact_bytes: 1024 * 1024,
            cluster_lease_ms: 10_000,
            cluster_call_timeout_ms: 10_000,
            name_limits: NameLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_and_defaults_apply() {
        let cfg: SubscriptionsConfig =
            serde_json::from_str(r#"{"allow_dev_webhooks": true}"#).expect("valid");
        assert!(cfg.allow_dev_webhooks);
        assert_eq!(cfg.webhook_timeout_ms, 10_000);
        assert!(cfg.public_base_url.is_none());
        assert_eq!(cfg.cluster_lease_ms, 10_000);
        assert_eq!(cfg.cluster_call_timeout_ms, 10_000);
        let cfg: SubscriptionsConfig =
            serde_json::from_str(r#"{"cluster_lease_ms": 500, "cluster_call_timeout_ms": 200}"#)
                .expect("valid");
        assert_eq!(
            (cfg.cluster_lease_ms, cfg.cluster_call_timeout_ms),
            (500, 200)
        );
        assert!(
            serde_json::from_str::<SubscriptionsConfig>(r#"{"allow_dev_webhook": true}"#).is_err()
        );
    }
}
