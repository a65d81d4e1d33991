//! Webhook delivery ids, so that a replayed delivery is refused even after a restart.

use redb::ReadableTable;

use super::schema::WEBHOOK_DELIVERIES;
use super::{Result, Store, now_ms};

/// How long a delivery id is remembered; forges re-send within minutes, not weeks.
const RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

impl Store {
    /// Records a delivery id; `false` if it was seen before.
    pub fn claim_webhook_delivery(&self, delivery: &str) -> Result<bool> {
        let now = now_ms();
        let tx = self.db.begin_write()?;
        let fresh = {
            let mut deliveries = tx.open_table(WEBHOOK_DELIVERIES)?;
            if deliveries.get(delivery)?.is_some() {
                false
            } else {
                deliveries.insert(delivery, now)?;
                deliveries.retain(|_, at| now - at < RETENTION_MS)?;
                true
            }
        };
        tx.commit()?;
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        assert!(store.claim_webhook_delivery("d-1").unwrap());
        assert!(!store.claim_webhook_delivery("d-1").unwrap());
        assert!(store.claim_webhook_delivery("d-2").unwrap());
    }
}
