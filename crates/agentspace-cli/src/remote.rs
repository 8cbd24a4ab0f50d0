//! Talking to a running control plane: every command that can work either on the state
//! directory or through the API takes the same two options, and builds its client here.
//! The API token comes from AGENTSPACE_TOKEN or `--token-file`, never from the command
//! line (where other users of the host could read it in the process list).

use std::path::PathBuf;

use agentspace_server::client::{Client, Response};
use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `--server URL` and `--token-file FILE`.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct ServerArgs {
    /// Work through the control plane at this URL (e.g. `http://127.0.0.1:7171`) instead
    /// of on the state directory.
    #[arg(long, env = "AGENTSPACE_SERVER", value_name = "URL", global = true)]
    pub(crate) server: Option<String>,
    /// With a server: read the API token from this file instead of AGENTSPACE_TOKEN.
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) token_file: Option<PathBuf>,
}

impl ServerArgs {
    /// The control plane's client, or `None` to work on the state directory.
    pub(crate) fn remote(&self) -> Result<Option<Remote>> {
        let Some(url) = self.server.as_deref().filter(|u| !u.is_empty()) else {
            if self.token_file.is_some() {
                bail!(
                    "--token-file is for a control plane: give --server URL (or AGENTSPACE_SERVER) too"
                );
            }
            return Ok(None);
        };
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file `{}`", path.display()))?,
            None => std::env::var("AGENTSPACE_TOKEN").map_err(|_| {
                anyhow::anyhow!(
                    "no API token for the control plane at `{url}`: set AGENTSPACE_TOKEN or give --token-file (an admin makes tokens with POST /v1/users/NAME/tokens)"
                )
            })?,
        };
        let token = token.trim();
        if token.is_empty() {
            bail!("the API token is empty: set AGENTSPACE_TOKEN or give --token-file");
        }
        Ok(Some(Remote {
            client: Client::new(url, Some(token))?,
        }))
    }
}

/// A command's subcommands with `--server` and `--token-file` for all of them.
#[derive(clap::Args)]
pub(crate) struct WithServer<C: clap::Subcommand> {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    #[command(subcommand)]
    pub(crate) command: C,
}

/// A control plane, as one user (the token's).
pub(crate) struct Remote {
    client: Client,
}

/// Who the token belongs to, as the server sees it.
pub(crate) struct Me {
    pub(crate) tenant: String,
    pub(crate) user: String,
}

impl Remote {
    /// `GET path`, its JSON body on success.
    pub(crate) fn get(&self, path: &str) -> Result<Value> {
        Ok(check(self.client.get(path)?)?.json())
    }

    /// `GET path`, the whole answer on success (for text bodies and headers).
    pub(crate) fn get_raw(&self, path: &str) -> Result<Response> {
        check(self.client.get(path)?)
    }

    /// `POST path` with a JSON body, the answer's JSON on success.
    pub(crate) fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(check(self.client.post(path, body)?)?.json())
    }

    /// The token's tenant and user.
    pub(crate) fn me(&self) -> Result<Me> {
        let me = self.get("/v1/me")?;
        let field = |k: &str| me.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Ok(Me {
            tenant: field("tenant"),
            user: field("user"),
        })
    }

    /// The token's tenant, refusing `--tenant T` (`given`) when it is another: through
    /// a control plane the tenant is always the token's.
    pub(crate) fn tenant(&self, given: Option<&str>) -> Result<String> {
        let me = self.me()?;
        if let Some(t) = given
            && me.tenant != t
        {
            bail!(
                "`--tenant {t}`, but the API token is of tenant `{}`: through a control plane the tenant is the token's; drop --tenant or use a token of `{t}`",
                me.tenant
            );
        }
        Ok(me.tenant)
    }
}

/// The answer if it is a success; otherwise the server's error and fix.
pub(crate) fn check(r: Response) -> Result<Response> {
    if (200..300).contains(&r.status) {
        return Ok(r);
    }
    let mut message = r.error_message();
    // A refused definition lists each problem with where it is.
    if let Some(problems) = r.json().get("problems").and_then(Value::as_array) {
        for p in problems {
            let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
            let at = match (p.get("line").and_then(Value::as_u64), s("field")) {
                (Some(line), "") => format!("line {line}: "),
                (Some(line), field) => format!("`{field}` at line {line}: "),
                (None, "") => String::new(),
                (None, field) => format!("`{field}`: "),
            };
            message.push_str(&format!("\n  {at}{}", s("message")));
        }
    }
    bail!("the control plane refused ({}): {message}", r.status)
}

/// `?k=v&...` of the given pairs, percent-encoded; empty without pairs.
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::query;

    #[test]
    fn queries_encode_what_is_not_unreserved() {
        assert_eq!(
            query(&[
                ("resource", Some("a b&c=/é".to_owned())),
                ("task", None),
                ("limit", Some("5".to_owned())),
            ]),
            "?resource=a%20b%26c%3D%2F%C3%A9&limit=5"
        );
        assert_eq!(query(&[("task", None)]), "");
    }
}
