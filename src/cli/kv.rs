//! `shardflow kv put|get|delete|scan` and `shardflow vshard-of`.
//!
//! Keys and values are bytes. Human output shows them as text when they are
//! UTF-8 and as `0x..` hex otherwise; JSON says which (`"encoding"`).

use serde_json::json;
use shardflow::node::vshard::vshard_of as key_vshard;

use super::args::ClusterArgs;
use super::{parse, with_client, CliError, Output};

/// Prints the vShard of `key`.
pub fn vshard_of(key: &str, json: bool) -> Result<Output, CliError> {
    let vshard = key_vshard(key.as_bytes());
    if json {
        return Ok(Output::Json(json!({ "key": key, "vshard": vshard })));
    }
    Ok(Output::Text(vshard.to_string()))
}

/// Writes `value` under `key`; prints `ok` once acknowledged.
pub fn put(key: &str, value: &str, args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    with_client(args, |client| async move {
        client.put(key.as_bytes(), value.as_bytes()).await?;
        Ok(done(key, "put", json))
    })
}

/// Deletes `key`; prints `ok` once acknowledged.
pub fn delete(key: &str, args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    with_client(args, |client| async move {
        client.delete(key.as_bytes()).await?;
        Ok(done(key, "delete", json))
    })
}

fn done(key: &str, op: &str, json: bool) -> Output {
    match json {
        true => Output::Json(json!({ "key": key, "op": op, "ok": true })),
        false => Output::Text("ok".to_string()),
    }
}

/// Prints the value; an absent key is an error (exit 1).
pub fn get(key: &str, args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    let value = with_client(args, |client| async move {
        Ok(client.get(key.as_bytes()).await?)
    })?
    .ok_or_else(|| CliError::NotFound(key.to_string()))?;
    if json {
        let (text, encoding) = encode(&value);
        return Ok(Output::Json(
            json!({ "key": key, "value": text, "encoding": encoding }),
        ));
    }
    Ok(Output::Bytes(value))
}

/// Scans one vShard or all of them; `count` prints only how many keys.
pub fn scan(
    vshard: Option<u64>,
    count: bool,
    args: &ClusterArgs,
    json: bool,
) -> Result<Output, CliError> {
    let vshard = vshard.map(parse::vshard).transpose()?;
    if count {
        let total = with_client(args, |client| async move {
            Ok(match vshard {
                Some(vshard) => client.count_vshard(vshard).await?,
                None => client.count_all().await?,
            })
        })?;
        return Ok(match json {
            true => Output::Json(json!({ "vshard": vshard, "count": total })),
            false => Output::Text(total.to_string()),
        });
    }
    let pairs = with_client(args, |client| async move {
        Ok(match vshard {
            Some(vshard) => client.scan_vshard(vshard).await?,
            None => client.scan_all().await?,
        })
    })?;
    Ok(render_pairs(&pairs, json))
}

fn render_pairs(pairs: &[(Vec<u8>, Vec<u8>)], json: bool) -> Output {
    if json {
        let pairs: Vec<_> = pairs
            .iter()
            .map(|(key, value)| {
                let (key, key_encoding) = encode(key);
                let (value, encoding) = encode(value);
                json!({ "key": key, "key_encoding": key_encoding, "value": value, "encoding": encoding })
            })
            .collect();
        return Output::Json(json!({ "count": pairs.len(), "pairs": pairs }));
    }
    let lines: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{}\t{}", encode(key).0, encode(value).0))
        .collect();
    Output::Text(lines.join("\n"))
}

/// Text when UTF-8 (`"utf-8"`), else `0x` and lowercase hex (`"hex"`).
fn encode(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), "utf-8"),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            (format!("0x{hex}"), "hex")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_text_or_hex() {
        assert_eq!(encode(b"alice"), ("alice".to_string(), "utf-8"));
        assert_eq!(encode(&[0xff, 0x01]), ("0xff01".to_string(), "hex"));
    }
}
