//! What a client holds of one type, kept small: "the resources of snapshot S that it
//! subscribed to" plus a short list of exceptions. A stream that is in sync costs one
//! `TypeSnapshot` (a few `Arc`s) however many resources it holds, and a diff only looks at the
//! layers whose `Arc` changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Subscription;
use crate::snapshot::{LayerDiff, LayerDiffs, Resource, TypeSnapshot};

/// An exception to the base snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The client holds this version.
    Version(u64),
    /// The client was told the resource does not exist.
    Absent,
    /// The client may hold something, but it must be sent again.
    Stale,
    /// The client holds nothing of it (it unsubscribed), whatever the base says.
    Dropped,
}

/// What a client holds of one type.
#[derive(Debug, Clone, Default)]
pub struct HeldSet {
    base: TypeSnapshot,
    extra: HashMap<Arc<str>, Held>,
}

/// What to send to bring a client from what it holds to a snapshot.
#[derive(Debug, Default)]
pub struct Diff {
    /// New or changed resources.
    pub upserts: Vec<Arc<Resource>>,
    /// Names the client holds that are gone.
    pub removed: Vec<String>,
    /// Names it asked for explicitly that do not exist (and it was not told yet).
    pub missing: Vec<String>,
}

impl Diff {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty() && self.missing.is_empty()
    }
}

impl HeldSet {
    /// What the client holds of `name`.
    pub fn get(&self, sub: &Subscription, name: &str) -> Option<Held> {
        if let Some(h) = self.extra.get(name) {
            return (*h != Held::Dropped).then_some(*h);
        }
        if sub.wants(name) {
            return self.base.get(name).map(|r| Held::Version(r.version));
        }
        None
    }

    /// Records a version the client says it holds (`initial_resource_versions`).
    pub fn seed(&mut self, name: &str, version: Option<u64>) {
        self.extra
            .insert(Arc::from(name), version.map_or(Held::Stale, Held::Version));
    }

    /// Makes the next diff send `name` again.
    pub fn forget(&mut self, name: &Arc<str>) {
        self.extra.insert(name.clone(), Held::Stale);
    }

    /// The client dropped `name` (unsubscribe): it holds nothing of it any more.
    pub fn drop_name(&mut self, name: &str) {
        self.extra.insert(Arc::from(name), Held::Dropped);
    }

    /// What to send to bring the client to `ts`. `layers` shares the comparison of two
    /// versions of a layer between every stream that needs it.
    pub fn diff(&self, sub: &Subscription, ts: &TypeSnapshot, layers: &LayerDiffs) -> Diff {
        let mut d = Diff::default();
        let mut seen: HashSet<&str> = HashSet::new();
        let same_shape = self.base.layers().len() == ts.layers().len();
        let consider_new = |r: &Arc<Resource>, d: &mut Diff| {
            if sub.wants(&r.name) && self.get(sub, &r.name) != Some(Held::Version(r.version)) {
                d.upserts.push(r.clone());
            }
        };
        if same_shape {
            for (old, new) in self.base.layers().iter().zip(ts.layers()) {
                if Arc::ptr_eq(old, new) {
                    continue;
                }
                let ld: std::sync::Arc<LayerDiff> = layers.get(old, new);
                for r in &ld.changed {
                    consider_new(r, &mut d);
                }
                for name in &ld.removed {
                    if ts.get(name).is_none()
                        && matches!(self.get(sub, name), Some(Held::Version(_) | Held::Stale))
                    {
                        d.removed.push(name.to_string());
                    }
                }
            }
        } else {
            for r in ts.iter() {
                consider_new(r, &mut d);
                seen.insert(&r.name);
            }
            for r in self.base.iter() {
                if ts.get(&r.name).is_none()
                    && matches!(self.get(sub, &r.name), Some(Held::Version(_) | Held::Stale))
                {
                    d.removed.push(r.name.to_string());
                }
            }
        }
        // exceptions live outside the layer comparison
        for (name, h) in &self.extra {
            match (h, ts.get(name)) {
                (Held::Absent, _) | (Held::Dropped, None) => {}
                (_, Some(r)) => {
                    if !seen.contains(&**name) && sub.wants(name) && *h != Held::Version(r.version)
                    {
                        d.upserts.push(r.clone());
                    }
                }
                (Held::Version(_) | Held::Stale, None) => {
                    if !d.removed.iter().any(|n| **n == **name) {
                        d.removed.push(name.to_string());
                    }
                }
            }
        }
        // explicit subscriptions to names that do not exist
        for name in &sub.names {
            if ts.get(name).is_none()
                && !matches!(self.get(sub, name), Some(Held::Absent))
                && !d.removed.iter().any(|n| n == name)
            {
                d.missing.push(name.clone());
            }
        }
        d.upserts.sort_by(|a, b| a.name.cmp(&b.name));
        d.upserts.dedup_by(|a, b| a.name == b.name);
        d.removed.sort();
        d.removed.dedup();
        d
    }

    /// Names among `upserts` the client already holds a version of (updates, not additions).
    pub fn updated(&self, sub: &Subscription, upserts: &[Arc<Resource>]) -> Vec<Arc<str>> {
        upserts
            .iter()
            .filter(|r| matches!(self.get(sub, &r.name), Some(Held::Version(_))))
            .map(|r| r.name.clone())
            .collect()
    }

    /// The client now holds exactly what it wants of `ts`; names it asked for that do not
    /// exist are remembered as told.
    pub fn commit(&mut self, sub: &Subscription, ts: &TypeSnapshot) {
        self.base = ts.clone();
        self.extra.clear();
        for name in &sub.names {
            if ts.get(name).is_none() {
                self.extra.insert(Arc::from(name.as_str()), Held::Absent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ResourceMap;
    use switchyard_protos::TypeUrl;

    fn res(name: &str, body: &str) -> Arc<Resource> {
        Resource::new(
            TypeUrl::Cluster,
            name,
            &switchyard_protos::wkt::StringValue { value: body.into() },
        )
    }

    fn snap(layers: Vec<Arc<ResourceMap>>) -> TypeSnapshot {
        TypeSnapshot::new(layers)
    }

    fn names(d: &Diff) -> Vec<&str> {
        d.upserts.iter().map(|r| &*r.name).collect()
    }

    #[test]
    fn wildcard_diff_follows_changed_layers_only() {
        let shared = Arc::new(ResourceMap::new([res("a", "1"), res("b", "1")]));
        let own = Arc::new(ResourceMap::new([res("x", "1")]));
        let s1 = snap(vec![shared.clone(), own.clone()]);
        let sub = Subscription {
            wildcard: true,
            ..Default::default()
        };
        let mut h = HeldSet::default();
        assert_eq!(
            names(&h.diff(&sub, &s1, &LayerDiffs::default())),
            vec!["a", "b", "x"]
        );
        h.commit(&sub, &s1);
        assert!(h.diff(&sub, &s1, &LayerDiffs::default()).is_empty());
        // b changes, a stays, c appears; own layer untouched
        let shared2 = Arc::new(ResourceMap::new([
            res("a", "1"),
            res("b", "2"),
            res("c", "1"),
        ]));
        let s2 = snap(vec![shared2, own.clone()]);
        let d = h.diff(&sub, &s2, &LayerDiffs::default());
        assert_eq!(names(&d), vec!["b", "c"]);
        assert!(d.removed.is_empty());
        h.commit(&sub, &s2);
        // a removed
        let s3 = snap(vec![
            Arc::new(ResourceMap::new([res("b", "2"), res("c", "1")])),
            own,
        ]);
        let d = h.diff(&sub, &s3, &LayerDiffs::default());
        assert!(d.upserts.is_empty());
        assert_eq!(d.removed, vec!["a".to_string()]);
    }

    #[test]
    fn seeds_forget_and_missing_names() {
        let s = snap(vec![Arc::new(ResourceMap::new([
            res("a", "1"),
            res("b", "1"),
        ]))]);
        let a_version = s.get("a").unwrap().version;
        let sub = Subscription {
            names: ["a".to_string(), "b".to_string(), "nope".to_string()].into(),
            ..Default::default()
        };
        let mut h = HeldSet::default();
        h.seed("a", Some(a_version));
        h.seed("gone", Some(7));
        let d = h.diff(&sub, &s, &LayerDiffs::default());
        assert_eq!(names(&d), vec!["b"], "a is held at its version");
        assert_eq!(d.removed, vec!["gone".to_string()]);
        assert_eq!(d.missing, vec!["nope".to_string()]);
        h.commit(&sub, &s);
        assert!(
            h.diff(&sub, &s, &LayerDiffs::default()).is_empty(),
            "missing names are told once"
        );
        h.forget(&Arc::from("a"));
        assert_eq!(names(&h.diff(&sub, &s, &LayerDiffs::default())), vec!["a"]);
    }

    #[test]
    fn unsubscribed_names_are_not_held() {
        let s = snap(vec![Arc::new(ResourceMap::new([
            res("a", "1"),
            res("b", "1"),
        ]))]);
        let mut sub = Subscription {
            names: ["a".to_string(), "b".to_string()].into(),
            ..Default::default()
        };
        let mut h = HeldSet::default();
        h.commit(&sub, &s);
        sub.names.remove("b");
        h.drop_name("b");
        assert_eq!(h.get(&sub, "b"), None);
        sub.names.insert("b".into());
        assert_eq!(
            names(&h.diff(&sub, &s, &LayerDiffs::default())),
            vec!["b"],
            "re-subscribing sends it again"
        );
    }
}
