//! The Elasticsearch client wrapper: every request es-ceiling makes (create, seed, CAS `_bulk`
//! and PUT, read the copied index, delete) and the reading of their answers. The only module that
//! talks to Elasticsearch; it decides nothing about what is measured, writes only to the scratch
//! index, and only ever reads the index it copies.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use reqwest::{Client, Url};
use serde_json::{Value, json};

use crate::docs::Docs;
use crate::like::{LIKE_SAMPLE, Like, Template, copied_settings, one_index};

/// A document's CAS token, as the last write returned it.
#[derive(Debug, Clone, Copy)]
pub struct Token {
    seq_no: u64,
    primary_term: u64,
}

/// How one CAS write ended.
#[derive(Debug, Clone, Copy)]
pub enum ItemOutcome {
    Ok(Token),
    Conflict,
    Failed,
}

/// Index names go into URL paths unescaped, so they are kept to what ES allows anyway.
pub fn check_index_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)),
        "index name {name:?} must be lowercase letters, digits, - _ ."
    );
    Ok(())
}

/// One Elasticsearch and the scratch index this run writes to.
#[derive(Debug)]
pub struct Es {
    client: Client,
    pub base: Url,
    pub index: String,
}

impl Es {
    /// `timeout` bounds every request.
    pub fn new(base: Url, index: String, timeout: Duration) -> anyhow::Result<Es> {
        let client =
            Client::builder().timeout(timeout).pool_max_idle_per_host(64).no_proxy().build()?;
        Ok(Es { client, base, index })
    }

    fn url(&self, path: &str) -> anyhow::Result<Url> {
        Ok(self.base.join(path)?)
    }

    /// Sends and returns the JSON body; any non-2xx status is an error carrying the body.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!(
                "elasticsearch answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// The root endpoint's answer (cluster name, version).
    pub async fn info(&self) -> anyhow::Result<Value> {
        self.send(self.client.get(self.url("")?)).await
    }

    /// Creates the scratch index; without `mappings` fields are mapped dynamically.
    pub async fn create_index(
        &self,
        settings: &Value,
        mappings: Option<&Value>,
    ) -> anyhow::Result<()> {
        let mut body = json!({ "settings": settings });
        if let Some(m) = mappings {
            body["mappings"] = m.clone();
        }
        self.send(self.client.put(self.url(&self.index)?).json_body(&body)).await.with_context(
            || format!("creating scratch index {} (it must not exist)", self.index),
        )?;
        Ok(())
    }

    /// Reads what `--like-index` copies: the mappings and shard/replica settings of `name`'s one
    /// concrete index, and up to [`LIKE_SAMPLE`] documents as templates. The refresh makes
    /// documents written a moment ago (an enrollment wave) searchable; it changes no data.
    pub async fn read_like(&self, name: &str) -> anyhow::Result<Like> {
        let context = || format!("reading --like-index {name}");
        let mappings = self.send(self.client.get(self.url(&format!("{name}/_mapping"))?)).await;
        let mappings = one_index(&mappings.with_context(context)?, name)?["mappings"].clone();
        let settings = self.send(self.client.get(self.url(&format!("{name}/_settings"))?)).await;
        let settings =
            copied_settings(&one_index(&settings.with_context(context)?, name)?["settings"])
                .with_context(context)?;
        if let Err(e) = self.send(self.client.post(self.url(&format!("{name}/_refresh"))?)).await {
            eprintln!("es-ceiling: refreshing {name} failed, sampling what is searchable: {e:#}");
        }
        let query =
            json!({ "size": LIKE_SAMPLE, "track_total_hits": false, "query": { "match_all": {} } });
        let url = self.url(&format!("{name}/_search"))?;
        let found =
            self.send(self.client.post(url).json_body(&query)).await.with_context(context)?;
        let hits = found["hits"]["hits"].as_array().context("search response without hits")?;
        ensure!(
            !hits.is_empty(),
            "--like-index {name} has no documents to copy (enroll some agents through opampd first)"
        );
        let templates = hits
            .iter()
            .map(|h| Template::new(&h["_source"]).with_context(|| format!("document {}", h["_id"])))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(context)?;
        Ok(Like { settings, mappings, templates })
    }

    pub async fn delete_index(&self) -> anyhow::Result<()> {
        self.send(self.client.delete(self.url(&self.index)?)).await.map(|_| ())
    }

    /// Creates the documents in bulks of 1000 and returns their CAS tokens.
    pub async fn seed(&self, n: usize, docs: &Docs) -> anyhow::Result<Vec<Token>> {
        let mut tokens = Vec::with_capacity(n);
        for start in (0..n).step_by(1000) {
            let end = (start + 1000).min(n);
            let mut body = String::new();
            for i in start..end {
                body.push_str(&json!({ "create": { "_id": docs.id(i) } }).to_string());
                body.push('\n');
                body.push_str(&docs.render(i, 0));
                body.push('\n');
            }
            let resp = self.bulk(body).await?;
            for item in resp["items"].as_array().context("bulk response without items")? {
                let t =
                    token(&item["create"]).with_context(|| format!("seeding failed: {item}"))?;
                tokens.push(t);
            }
        }
        ensure!(tokens.len() == n, "seeded {} of {n} documents", tokens.len());
        Ok(tokens)
    }

    async fn bulk(&self, body: String) -> anyhow::Result<Value> {
        let url = self.url(&format!("{}/_bulk", self.index))?;
        self.send(self.client.post(url).header("Content-Type", "application/x-ndjson").body(body))
            .await
    }

    /// One `_bulk` of CAS `index` items for `batch` (indexes into `mine`, whose ids start at
    /// `first`); also returns the documents' bytes.
    pub async fn cas_bulk(
        &self,
        first: usize,
        batch: &[usize],
        mine: &[Token],
        round: u64,
        docs: &Docs,
    ) -> anyhow::Result<(Vec<(usize, ItemOutcome)>, u64)> {
        let mut body = String::with_capacity(batch.len() * (docs.approx_len() + 150));
        let mut doc_bytes = 0u64;
        for &i in batch {
            let t = mine[i];
            body.push_str(
                &json!({ "index": { "_id": docs.id(first + i), "if_seq_no": t.seq_no, "if_primary_term": t.primary_term } })
                    .to_string(),
            );
            body.push('\n');
            let doc = docs.render(first + i, round);
            doc_bytes += doc.len() as u64;
            body.push_str(&doc);
            body.push('\n');
        }
        let resp = self.bulk(body).await?;
        let items = resp["items"].as_array().context("bulk response without items")?;
        ensure!(
            items.len() == batch.len(),
            "bulk answered {} items for {}",
            items.len(),
            batch.len()
        );
        let outcomes = batch.iter().zip(items).map(|(&i, item)| (i, outcome(&item["index"])));
        Ok((outcomes.collect(), doc_bytes))
    }

    /// One CAS `PUT _doc/id?if_seq_no&if_primary_term`; also returns the document's bytes.
    pub async fn cas_put(
        &self,
        id: usize,
        t: Token,
        round: u64,
        docs: &Docs,
    ) -> anyhow::Result<(ItemOutcome, u64)> {
        let mut url = self.url(&format!("{}/_doc/{}", self.index, docs.id(id)))?;
        url.query_pairs_mut()
            .append_pair("if_seq_no", &t.seq_no.to_string())
            .append_pair("if_primary_term", &t.primary_term.to_string());
        let doc = docs.render(id, round);
        let doc_bytes = doc.len() as u64;
        let resp = self
            .client
            .put(url)
            .header("Content-Type", "application/json")
            .body(doc)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        let outcome = match status {
            200 | 201 => token(&body).map_or(ItemOutcome::Failed, ItemOutcome::Ok),
            409 => ItemOutcome::Conflict,
            _ => ItemOutcome::Failed,
        };
        Ok((outcome, doc_bytes))
    }
}

/// Lets `RequestBuilder` take a JSON body without reqwest's `json` feature.
trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("Content-Type", "application/json").body(v.to_string())
    }
}

/// A `_bulk` item's outcome from its result object.
fn outcome(item: &Value) -> ItemOutcome {
    match item["status"].as_u64() {
        Some(200 | 201) => token(item).map_or(ItemOutcome::Failed, ItemOutcome::Ok),
        Some(409) => ItemOutcome::Conflict,
        _ => ItemOutcome::Failed,
    }
}

fn token(v: &Value) -> Option<Token> {
    Some(Token { seq_no: v["_seq_no"].as_u64()?, primary_term: v["_primary_term"].as_u64()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_are_kept_to_url_safe_characters() {
        for ok in ["es-ceiling-1700000000000", "a", "fleet_agents.v2"] {
            assert!(check_index_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "BAD", "a/b", "a b", "a?b", "é"] {
            assert!(check_index_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bulk_items_are_classified_by_status() {
        let ok = json!({ "status": 201, "_seq_no": 5, "_primary_term": 2 });
        assert!(matches!(outcome(&ok), ItemOutcome::Ok(Token { seq_no: 5, primary_term: 2 })));
        assert!(matches!(outcome(&json!({ "status": 200 })), ItemOutcome::Failed));
        assert!(matches!(outcome(&json!({ "status": 409 })), ItemOutcome::Conflict));
        assert!(matches!(outcome(&json!({ "status": 429 })), ItemOutcome::Failed));
        assert!(matches!(outcome(&json!({})), ItemOutcome::Failed));
    }
}
