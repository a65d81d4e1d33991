//! Webhook deliveries seen, by id and by body digest, so that a replayed
//! delivery is refused even after a restart — also under a new id (the id is
//! not signed; the body is).

use super::engine::{Read, Write};
use super::schema::WEBHOOK_DELIVERIES;
use super::{Result, Store, now_ms};

/// How long a delivery id is remembered; forges re-send within minutes, not weeks.
const RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

/// Whether a delivery is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClaim {
    Fresh,
    /// This delivery id was received before.
    SeenId,
    /// This exact (signed) body was received before, under another id.
    SeenBody,
}

impl Store {
    /// Records a delivery by its id and its body's digest, in one transaction.
    pub fn claim_webhook_delivery(
        &self,
        delivery: &str,
        body_digest: &str,
    ) -> Result<DeliveryClaim> {
        let now = now_ms();
        let body_key = format!("sha256:{body_digest}");
        let mut tx = self.write()?;
        let claim = if tx.get(WEBHOOK_DELIVERIES, delivery)?.is_some() {
            DeliveryClaim::SeenId
        } else if tx.get(WEBHOOK_DELIVERIES, &body_key)?.is_some() {
            DeliveryClaim::SeenBody
        } else {
            tx.insert(WEBHOOK_DELIVERIES, delivery, &now)?;
            tx.insert(WEBHOOK_DELIVERIES, &body_key, &now)?;
            tx.retain(WEBHOOK_DELIVERIES, |_, at| now - at < RETENTION_MS)?;
            DeliveryClaim::Fresh
        };
        tx.commit()?;
        Ok(claim)
    }

    /// Forgets a claimed delivery that was refused for now (`503`): the
    /// forge's redelivery of it must be taken, not refused as a replay.
    pub fn release_webhook_delivery(&self, delivery: &str, body_digest: &str) -> Result<()> {
        let mut tx = self.write()?;
        tx.remove(WEBHOOK_DELIVERIES, delivery)?;
        tx.remove(WEBHOOK_DELIVERIES, format!("sha256:{body_digest}").as_str())?;
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    #[test]
    fn a_delivery_is_claimed_once_by_id_and_by_body() {
        for backing in testing::backings() {
            let store = backing.open();
            let claim = |id, body| store.claim_webhook_delivery(id, body).unwrap();
            assert_eq!(claim("d-1", "aa"), DeliveryClaim::Fresh);
            assert_eq!(claim("d-1", "bb"), DeliveryClaim::SeenId);
            assert_eq!(claim("d-2", "aa"), DeliveryClaim::SeenBody);
            assert_eq!(claim("d-2", "bb"), DeliveryClaim::Fresh);
            store.release_webhook_delivery("d-2", "bb").unwrap();
            assert_eq!(claim("d-2", "bb"), DeliveryClaim::Fresh);
        }
    }
}
