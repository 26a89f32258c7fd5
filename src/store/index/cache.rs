//! The per-folder cache of what protocol layers derived from message files (sizes, header
//! blocks, rendered IMAP items), in memory only and bounded.

use std::collections::HashMap;

/// What protocol layers derived from a message file and want to keep, per UID, shared by
/// every session of the folder in this process: a message's content never changes, so an
/// entry stays valid as long as the UID names the same file base (checked on every read,
/// which also covers a rebuild that reuses UIDs). Filled lazily; when it grows beyond
/// [`MessageCache::folder_budget`] bytes, or the caches of all folders together (`total`,
/// shared through the `Store`) pass [`MessageCache::total_budget`], the entries of the
/// lowest UIDs go first.
pub struct MessageCache {
    map: HashMap<u32, CachedMessage>,
    bytes: usize,
    /// This folder's limit ([`MessageCache::folder_budget`]).
    budget: usize,
    pub(super) total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for MessageCache {
    fn default() -> Self {
        MessageCache {
            map: HashMap::new(),
            bytes: 0,
            budget: MessageCache::folder_budget(),
            total: Default::default(),
        }
    }
}

impl Drop for MessageCache {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Default, Clone)]
pub struct CachedMessage {
    base: Box<str>,
    /// RFC822.SIZE (CRLF-normalised).
    pub size: Option<u64>,
    /// The top-level header block, CRLF-normalised, with the blank line that ends it.
    pub header: Option<std::sync::Arc<[u8]>>,
    /// Rendered protocol items (e.g. IMAP BODYSTRUCTURE, BODY, ENVELOPE), by the caller's key.
    pub items: Vec<(u8, std::sync::Arc<[u8]>)>,
}

impl CachedMessage {
    pub fn item(&self, key: u8) -> Option<std::sync::Arc<[u8]>> {
        self.items.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }
    fn weight(&self) -> usize {
        64 + self.base.len()
            + self.header.as_ref().map_or(0, |h| h.len())
            + self.items.iter().map(|(_, v)| v.len() + 16).sum::<usize>()
    }
}

impl MessageCache {
    /// All folders of the process together: an eighth of the machine's memory, at least
    /// 64 MiB, at most 1 GiB. A folder with headers, BODYSTRUCTURE and ENVELOPE cached
    /// needs about 1 KB per message (more for mail with long trace headers): 10 MB for
    /// 10,000 messages, 100 MB for 100,000.
    pub fn total_budget() -> usize {
        static TOTAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *TOTAL.get_or_init(|| {
            let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            });
            let mem = mem_kib.map_or(2 << 30, |k| k * 1024);
            (mem / 8).clamp(64 << 20, 1 << 30)
        })
    }

    /// One folder: half of [`MessageCache::total_budget`].
    pub fn folder_budget() -> usize {
        Self::total_budget() / 2
    }

    fn set_bytes(&mut self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if bytes >= self.bytes {
            self.total.fetch_add(bytes - self.bytes, Relaxed);
        } else {
            self.total.fetch_sub(self.bytes - bytes, Relaxed);
        }
        self.bytes = bytes;
    }

    pub fn get(&self, uid: u32, base: &str) -> Option<&CachedMessage> {
        self.map.get(&uid).filter(|c| &*c.base == base)
    }

    /// Change (or create) the entry of `uid`, whose file base is `base` (through
    /// `Index::cache_update`, which knows the base).
    pub(super) fn update(&mut self, uid: u32, base: &str, f: impl FnOnce(&mut CachedMessage)) {
        let existed = self.map.contains_key(&uid);
        let e = self.map.entry(uid).or_default();
        let before = if existed { e.weight() } else { 0 };
        if &*e.base != base {
            *e = CachedMessage { base: base.into(), ..Default::default() };
        }
        f(e);
        let after = e.weight();
        let bytes = self.bytes.saturating_sub(before) + after;
        self.set_bytes(bytes);
        let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
        if self.bytes > self.budget {
            self.evict(self.budget / 4 * 3);
        } else if total > Self::total_budget() {
            self.evict(self.bytes / 2);
        }
    }

    /// Drop the entries of the lowest UIDs (the oldest mail, which clients look at least)
    /// until at most `target` bytes remain. Dropping everything instead made a FETCH 1:* of a
    /// folder bigger than the budget miss on every message, sweep after sweep.
    fn evict(&mut self, target: usize) {
        let mut uids: Vec<u32> = self.map.keys().copied().collect();
        uids.sort_unstable();
        let mut bytes = self.bytes;
        for uid in uids {
            if bytes <= target {
                break;
            }
            if let Some(e) = self.map.remove(&uid) {
                bytes = bytes.saturating_sub(e.weight());
            }
        }
        self.set_bytes(bytes);
    }

    pub(super) fn forget(&mut self, uid: u32) {
        if let Some(e) = self.map.remove(&uid) {
            let bytes = self.bytes.saturating_sub(e.weight());
            self.set_bytes(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over the budget, the lowest UIDs go first and the cache keeps most of what it holds
    /// (clearing it all made every sweep of a big folder miss everything).
    #[test]
    fn message_cache_evicts_the_oldest_uids() {
        let budget = 48 << 20;
        let mut c = MessageCache::default();
        c.budget = budget;
        let mb = 1 << 20;
        let n = (budget / mb + 10) as u32;
        for uid in 1..=n {
            c.update(uid, &format!("b{uid}"), |e| e.header = Some(vec![0u8; mb].into()));
            assert!(c.bytes <= budget, "{uid}: {}", c.bytes);
        }
        assert!(c.get(n, &format!("b{n}")).is_some(), "the newest stays");
        assert!(c.get(1, "b1").is_none(), "the oldest went");
        let kept = c.map.len() * mb;
        assert!(kept >= budget / 2, "most is kept: {kept}");
        let total = MessageCache::total_budget();
        assert!((64 << 20..=1 << 30).contains(&total) && MessageCache::folder_budget() == total / 2);
        let lowest_kept = *c.map.keys().min().unwrap();
        assert!((lowest_kept..=n).all(|u| c.map.contains_key(&u)), "a contiguous run of the newest");
        assert_eq!(c.total.load(std::sync::atomic::Ordering::Relaxed), c.bytes);
    }
}
