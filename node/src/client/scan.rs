//! Scans: one vShard page by page, and every vShard (scatter-gather with a
//! bounded number of vShards in flight).
//!
//! Guarantees: a vShard's pages are asked in key order after the last key
//! seen, so a scan that follows a vShard to a new group (a migration between
//! pages) neither repeats nor skips a key; a page that claims `more` without
//! advancing is a protocol error, not a loop; at most
//! [`ClientConfig::scan_concurrency`](super::ClientConfig) vShards are
//! scanned at once, and the first error stops the others.

use std::future::Future;

use tokio::task::JoinSet;

use crate::rpc::ClientResponse;
use crate::vshard::VSHARDS;

use super::error::ClientError;
use super::{check_vshard, Client, KeyOp};

/// Key-value pairs, in key order within a vShard.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

impl Client {
    /// Every pair of `vshard`, in key order (all pages).
    pub async fn scan_vshard(&self, vshard: u16) -> Result<Pairs, ClientError> {
        let mut pairs = Vec::new();
        self.for_each_page(vshard, |page| pairs.extend(page))
            .await?;
        Ok(pairs)
    }

    /// How many keys `vshard` holds (pages counted, not kept).
    pub async fn count_vshard(&self, vshard: u16) -> Result<u64, ClientError> {
        let mut count = 0u64;
        self.for_each_page(vshard, |page| count += page.len() as u64)
            .await?;
        Ok(count)
    }

    /// Every pair of the cluster, vShard by vShard (in vShard order, then
    /// key order), gathered with bounded concurrency.
    pub async fn scan_all(&self) -> Result<Pairs, ClientError> {
        let pages = self
            .scatter(|client, vshard| async move { client.scan_vshard(vshard).await })
            .await?;
        Ok(pages.into_iter().flatten().collect())
    }

    /// How many keys the cluster holds.
    pub async fn count_all(&self) -> Result<u64, ClientError> {
        let counts = self
            .scatter(|client, vshard| async move { client.count_vshard(vshard).await })
            .await?;
        Ok(counts.into_iter().sum())
    }

    /// Calls `page` with each page of `vshard`, in key order.
    async fn for_each_page(
        &self,
        vshard: u16,
        mut page: impl FnMut(Pairs),
    ) -> Result<(), ClientError> {
        check_vshard(u64::from(vshard))?;
        let limit = self.inner.config.scan_page_pairs;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let op = KeyOp::Scan {
                vshard,
                after: after.clone(),
                limit,
            };
            let (pairs, more) = self.key_call(op, expect_page).await?;
            let last = pairs.last().map(|(key, _)| key.clone());
            check_progress(vshard, after.as_deref(), last.as_deref(), more)?;
            page(pairs);
            if !more {
                return Ok(());
            }
            after = last;
        }
    }

    /// Runs `per_vshard` for every vShard, at most `scan_concurrency` at
    /// once; results in vShard order. The first error aborts the rest.
    async fn scatter<T, F, Fut>(&self, per_vshard: F) -> Result<Vec<T>, ClientError>
    where
        T: Send + 'static,
        F: Fn(Client, u16) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        self.ensure_routing().await?;
        let concurrency = self.inner.config.scan_concurrency;
        let mut results: Vec<Option<T>> = (0..VSHARDS).map(|_| None).collect();
        let mut tasks = JoinSet::new();
        let mut next: u16 = 0;
        loop {
            while tasks.len() < concurrency && next < VSHARDS {
                let work = per_vshard(self.clone(), next);
                let vshard = next;
                tasks.spawn(async move { (vshard, work.await) });
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (vshard, result) = match joined {
                Ok(done) => done,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return Err(ClientError::Cancelled),
            };
            results[usize::from(vshard)] = Some(result?);
        }
        Ok(results.into_iter().flatten().collect())
    }
}

fn expect_page(response: ClientResponse) -> Result<(Pairs, bool), ClientResponse> {
    match response {
        ClientResponse::Scan { pairs, more } => Ok((pairs, more)),
        other => Err(other),
    }
}

/// A page must advance past `after`, in key order, and one that says `more`
/// must hold at least one pair.
fn check_progress(
    vshard: u16,
    after: Option<&[u8]>,
    last: Option<&[u8]>,
    more: bool,
) -> Result<(), ClientError> {
    let advanced = match (after, last) {
        (Some(after), Some(last)) => last > after,
        (_, Some(_)) => true,
        (_, None) => !more,
    };
    if advanced {
        return Ok(());
    }
    Err(ClientError::Protocol {
        peer: format!("the leader of vShard {vshard}"),
        reason: "a scan page did not advance past the previous one".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_must_advance() {
        assert!(check_progress(1, None, Some(b"a"), true).is_ok());
        assert!(check_progress(1, Some(b"a"), Some(b"b"), true).is_ok());
        assert!(check_progress(1, Some(b"a"), None, false).is_ok());
        assert!(check_progress(1, None, None, false).is_ok());
        assert!(check_progress(1, Some(b"b"), Some(b"a"), true).is_err());
        assert!(check_progress(1, Some(b"b"), Some(b"b"), false).is_err());
        assert!(check_progress(1, Some(b"a"), None, true).is_err());
    }
}
