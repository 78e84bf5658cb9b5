//! Who may pull and push what ([`Access`], [`AccessRule`]), and the
//! per-identity bounds on connections and streams (SPEC.md §8.9).
//!
//! The per-identity counter lives here on its own so that per-address
//! bounds can sit beside it: both are "at most N at once for this key".

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use globset::{GlobBuilder, GlobMatcher};

use super::{Identity, Peer};
use crate::Error;

/// One rule of `--allow-push` / `--allow-get`: `PATTERN[=PREFIX]`.
///
/// `PATTERN` is a glob (`*`, `?`, `[abc]`, `{a,b}`; case-insensitive)
/// matched against the client certificate's subject CN and each of its SAN
/// entries; one match is enough. `PREFIX`, when given, scopes the rule to
/// object names that start with it (a plain string prefix: write
/// `updates/` to mean "under `updates/`"). Names are checked by
/// [`Registry::decode_name`](super::Registry::decode_name) first, so no
/// `..` can lead out of a prefix.
///
/// ```
/// use tensorwire::transport::{AccessRule, Identity, Peer};
/// let rule: AccessRule = "site-*=updates/".parse().unwrap();
/// let peer = Peer::verified(None, Identity::new(Some("site-7".into()), vec![]));
/// assert!(rule.allows(&peer, "updates/round-3.safetensors"));
/// assert!(!rule.allows(&peer, "global.safetensors"));
/// assert!(!rule.allows(&Peer::anonymous(None), "updates/x"));
/// ```
#[derive(Clone)]
pub struct AccessRule {
    pattern: String,
    matcher: GlobMatcher,
    prefix: Option<String>,
}

impl AccessRule {
    /// Whether `peer` may act on object `name` under this rule: it has a
    /// verified identity with a name matching the pattern, and `name` lies
    /// under the prefix.
    pub fn allows(&self, peer: &Peer, name: &str) -> bool {
        let Some(identity) = peer.identity() else { return false };
        self.matches(identity) && self.prefix.as_deref().is_none_or(|p| name.starts_with(p))
    }

    fn matches(&self, identity: &Identity) -> bool {
        identity.names().any(|n| self.matcher.is_match(n))
    }
}

impl FromStr for AccessRule {
    type Err = Error;

    fn from_str(rule: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidRule { rule: rule.to_string(), reason };
        let (pattern, prefix) = match rule.split_once('=') {
            Some((p, prefix)) => (p, Some(prefix.to_string())),
            None => (rule, None),
        };
        if pattern.is_empty() {
            return Err(invalid("empty pattern".into()));
        }
        if prefix.as_deref() == Some("") {
            return Err(invalid("empty prefix after '='".into()));
        }
        let glob =
            GlobBuilder::new(pattern).case_insensitive(true).build().map_err(|e| invalid(e.kind().to_string()))?;
        Ok(AccessRule { pattern: pattern.to_string(), matcher: glob.compile_matcher(), prefix })
    }
}

impl fmt::Debug for AccessRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessRule({self})")
    }
}

impl fmt::Display for AccessRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prefix {
            Some(p) => write!(f, "{}={p}", self.pattern),
            None => write!(f, "{}", self.pattern),
        }
    }
}

/// Who may do one thing (pull, or push) on a server.
///
/// ```
/// use tensorwire::transport::{Access, Peer};
/// let access = Access::only(["site-*=updates/", "controller"]).unwrap();
/// assert!(!access.allows(&Peer::anonymous(None), "updates/x"));
/// assert!(Access::Anyone.allows(&Peer::anonymous(None), "x"));
/// assert!(!Access::Nobody.allows(&Peer::anonymous(None), "x"));
/// ```
#[derive(Debug, Clone)]
pub enum Access {
    /// Every peer, verified or not (loopback, tests, public models).
    Anyone,
    /// No peer.
    Nobody,
    /// Peers with a verified identity that one of these rules allows.
    Only(Vec<AccessRule>),
}

impl Access {
    /// [`Access::Only`] from rule strings (`PATTERN[=PREFIX]`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRule`] for a malformed rule.
    pub fn only<S: AsRef<str>>(rules: impl IntoIterator<Item = S>) -> Result<Self, Error> {
        rules.into_iter().map(|r| r.as_ref().parse()).collect::<Result<Vec<_>, _>>().map(Access::Only)
    }

    /// Whether `peer` may act on object `name`.
    pub fn allows(&self, peer: &Peer, name: &str) -> bool {
        match self {
            Access::Anyone => true,
            Access::Nobody => false,
            Access::Only(rules) => rules.iter().any(|r| r.allows(peer, name)),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Anyone => write!(f, "anyone"),
            Access::Nobody => write!(f, "nobody"),
            Access::Only(rules) => {
                let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
                write!(f, "{}", rules.join(", "))
            }
        }
    }
}

/// At most `max` holders at once per key: the per-identity bound on
/// connections and on streams (keyed by [`Identity`]; a per-address bound
/// is the same with an `IpAddr` key). Cheap to clone; clones share the
/// counts.
#[derive(Debug, Clone)]
pub(crate) struct KeyedLimiter<K = Identity> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K> Default for KeyedLimiter<K> {
    fn default() -> Self {
        KeyedLimiter { counts: Arc::default() }
    }
}

impl<K: Eq + std::hash::Hash + Clone> KeyedLimiter<K> {
    /// A permit for `key`, or `None` when `max` are already held.
    pub(crate) fn try_acquire(&self, key: &K, max: usize) -> Option<KeyedPermit<K>> {
        // A poisoned lock only means another holder panicked mid-update of
        // a plain counter; the map is still usable.
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(KeyedPermit { counts: Arc::clone(&self.counts), key: key.clone() })
    }
}

/// Held while a connection or stream counts against its key.
#[derive(Debug)]
pub(crate) struct KeyedPermit<K: Eq + std::hash::Hash = Identity> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + std::hash::Hash> Drop for KeyedPermit<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(cn: &str, sans: &[&str]) -> Peer {
        Peer::verified(None, Identity::new(Some(cn.into()), sans.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn rule_matches_cn_or_any_san() {
        let rule: AccessRule = "*.hospital.example".parse().expect("rule");
        assert!(rule.allows(&site("site-1", &["node1.hospital.example"]), "x"));
        assert!(rule.allows(&site("NODE2.Hospital.Example", &[]), "x"));
        assert!(!rule.allows(&site("site-1", &["node1.other.example"]), "x"));
    }

    #[test]
    fn rule_prefix_scopes_names() {
        let rule: AccessRule = "site-?=updates/".parse().expect("rule");
        assert!(rule.allows(&site("site-1", &[]), "updates/a"));
        assert!(!rule.allows(&site("site-1", &[]), "updatesX/a"));
        assert!(!rule.allows(&site("site-12", &[]), "updates/a"));
    }

    #[test]
    fn rule_never_allows_an_unverified_peer() {
        let rule: AccessRule = "*".parse().expect("rule");
        assert!(!rule.allows(&Peer::anonymous(None), "x"));
        assert!(rule.allows(&site("anything", &[]), "x"));
    }

    #[test]
    fn rule_rejects_malformed() {
        for bad in ["", "=updates/", "site-*=", "site-[", "{a,b"] {
            assert!(matches!(bad.parse::<AccessRule>(), Err(Error::InvalidRule { .. })), "{bad:?} was accepted");
        }
    }

    #[test]
    fn rule_round_trips_through_display() {
        assert_eq!("site-*=updates/".parse::<AccessRule>().expect("rule").to_string(), "site-*=updates/");
        let access = Access::only(["a", "b=c/"]).expect("rules");
        assert_eq!(access.to_string(), "a, b=c/");
    }

    #[test]
    fn limiter_counts_per_identity_and_releases() {
        let limiter: KeyedLimiter = KeyedLimiter::default();
        let a = Identity::new(Some("a".into()), vec![]);
        let b = Identity::new(Some("b".into()), vec![]);
        let first = limiter.try_acquire(&a, 2).expect("1st");
        let _second = limiter.try_acquire(&a, 2).expect("2nd");
        assert!(limiter.try_acquire(&a, 2).is_none(), "a third permit for the same identity");
        assert!(limiter.try_acquire(&b, 2).is_some(), "another identity is not starved");
        drop(first);
        assert!(limiter.try_acquire(&a, 2).is_some(), "a released permit is reusable");
    }
}
