//! Settings, read once at start-up from environment variables named as Azure Functions apps name them, and
//! validated with messages that say what to set.

use std::path::{Path, PathBuf};

/// Where state (ledger, decision log, cursors) lives, from `RELAY_STATE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUrl {
    /// `sqlite:PATH`: an embedded SQLite database (local mode, tests, single-instance hosts).
    Sqlite(PathBuf),
    /// `https://<account>.blob.core.windows.net/<container>[?SAS]`: a Blob Storage container.
    Blob(String),
}

/// A setting is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    /// The environment variable.
    pub setting: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl StateUrl {
    /// Parses `sqlite:PATH` or an `https://` / `http://` Blob container URL.
    pub fn parse(text: &str) -> Result<StateUrl, ConfigError> {
        let err = |message: String| ConfigError {
            setting: "RELAY_STATE_URL",
            message,
        };
        let text = text.trim();
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(err(
                    "`sqlite:` needs a file path, e.g. `sqlite:/home/data/relay.db`".into(),
                ));
            }
            return Ok(StateUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("https://") || text.starts_with("http://") {
            let (base, query) = text
                .split_once('?')
                .map_or((text, None), |(b, q)| (b, Some(q)));
            let base = base.trim_end_matches('/');
            let container = base.splitn(4, '/').nth(3).unwrap_or("");
            if container.is_empty() {
                return Err(err(format!(
                    "`{base}` has no container: use https://<account>.blob.core.windows.net/<container>"
                )));
            }
            return Ok(StateUrl::Blob(match query {
                Some(q) => format!("{base}?{q}"),
                None => base.to_string(),
            }));
        }
        Err(err(format!(
            "`{text}` is neither `sqlite:PATH` nor a Blob container URL (https://<account>.blob.core.windows.net/<container>)"
        )))
    }

    /// The SQLite database in a data directory, as `local` and `inspect --data-dir` use it.
    pub fn in_data_dir(dir: &Path) -> StateUrl {
        StateUrl::Sqlite(dir.join("relay.db"))
    }
}

/// A setting whose value is only blanks is as good as unset (App Service keeps a cleared setting as "").
fn nonblank(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `RELAY_PUBLIC_URL`, without a trailing slash: where people reach the approval page, when set.
pub fn public_url(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    nonblank(env("RELAY_PUBLIC_URL")).map(|u| u.trim_end_matches('/').to_string())
}

/// Settings of `serve` (the custom handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSettings {
    /// `FUNCTIONS_CUSTOMHANDLER_PORT`: the port the host calls.
    pub port: u16,
    /// `RELAY_STATE_URL`.
    pub state: StateUrl,
    /// `RELAY_POLICY`, default `policy.toml` under `FUNCTIONS_APP_ROOT_PATH` (or the working directory).
    pub policy: PathBuf,
    /// `WEBSITE_INSTANCE_ID` is set: running on Azure.
    pub on_azure: bool,
    /// `RELAY_APPROVAL_KEY`: signs approval links; at least 32 bytes (on Azure, a Key Vault reference, so no
    /// secret sits in the app settings). When unset, `serve` signs with a key kept in the state store, made
    /// once by the first instance (see `StateStore::shared_key`).
    pub approval_key: Option<Vec<u8>>,
    /// `RELAY_PUBLIC_URL`, default `https://$WEBSITE_HOSTNAME`: where people reach the approval page.
    pub public_url: Option<String>,
}

impl ServeSettings {
    /// Reads and validates the settings from `env`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<ServeSettings, ConfigError> {
        let on_azure = env("WEBSITE_INSTANCE_ID").is_some_and(|v| !v.is_empty());
        let port_text = env("FUNCTIONS_CUSTOMHANDLER_PORT").or_else(|| env("FUNCTIONS_HTTPWORKER_PORT")).ok_or(ConfigError {
            setting: "FUNCTIONS_CUSTOMHANDLER_PORT",
            message: "not set: the Functions host sets it; to run by hand, set it or use `mlops-relay local`".into(),
        })?;
        let port = port_text.trim().parse::<u16>().map_err(|_| ConfigError {
            setting: "FUNCTIONS_CUSTOMHANDLER_PORT",
            message: format!("`{port_text}` is not a TCP port"),
        })?;
        let state = match env("RELAY_STATE_URL") {
            Some(url) => StateUrl::parse(&url)?,
            None if on_azure => {
                return Err(ConfigError {
                    setting: "RELAY_STATE_URL",
                    message: "not set: on Azure, state must live in a Blob container (https://<account>.blob.core.windows.net/<container>)".into(),
                });
            }
            None => StateUrl::Sqlite(PathBuf::from(".mlops-relay/relay.db")),
        };
        if on_azure && matches!(state, StateUrl::Sqlite(_)) {
            return Err(ConfigError {
                setting: "RELAY_STATE_URL",
                message: "refusing local SQLite on Azure (WEBSITE_INSTANCE_ID is set): instances do not share a disk, so effects would not be exactly once; use a Blob container URL".into(),
            });
        }
        let root = env("FUNCTIONS_APP_ROOT_PATH")
            .map(PathBuf::from)
            .unwrap_or_default();
        let policy = env("RELAY_POLICY")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("policy.toml"));
        let approval_key = match nonblank(env("RELAY_APPROVAL_KEY")) {
            // App Service passes a reference it could not resolve on as its own text, which is public (it is
            // in the app's configuration and the deployment guide): signing with it would let anyone forge
            // approval links.
            Some(k) if k.trim_start().starts_with("@Microsoft.KeyVault(") => {
                return Err(ConfigError {
                    setting: "RELAY_APPROVAL_KEY",
                    message: "is a Key Vault reference that App Service could not resolve: grant the app's identity `Key Vault Secrets User` on the vault (and check the secret's name), then restart the app".into(),
                });
            }
            Some(k) if k.len() >= 32 => Some(k.into_bytes()),
            Some(_) => {
                return Err(ConfigError {
                    setting: "RELAY_APPROVAL_KEY",
                    message: "too short: use at least 32 random characters (e.g. `openssl rand -base64 48`)".into(),
                });
            }
            None => None,
        };
        let public_url = public_url(&env)
            .or_else(|| nonblank(env("WEBSITE_HOSTNAME")).map(|h| format!("https://{h}")));
        Ok(ServeSettings {
            port,
            state,
            policy,
            on_azure,
            approval_key,
            public_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn state_urls() {
        assert_eq!(
            StateUrl::parse("sqlite:/data/r.db").unwrap(),
            StateUrl::Sqlite("/data/r.db".into())
        );
        assert_eq!(
            StateUrl::parse("sqlite://rel/r.db").unwrap(),
            StateUrl::Sqlite("rel/r.db".into())
        );
        assert_eq!(
            StateUrl::parse("https://acct.blob.core.windows.net/relay-state/").unwrap(),
            StateUrl::Blob("https://acct.blob.core.windows.net/relay-state".into()),
            "a trailing slash breaks Blob requests, so it is dropped"
        );
        assert_eq!(
            StateUrl::parse("http://127.0.0.1:10000/devstoreaccount1/state?sv=1&sig=x").unwrap(),
            StateUrl::Blob("http://127.0.0.1:10000/devstoreaccount1/state?sv=1&sig=x".into())
        );
        assert!(
            StateUrl::parse("https://acct.blob.core.windows.net")
                .unwrap_err()
                .message
                .contains("no container")
        );
        assert!(
            StateUrl::parse("postgres://x")
                .unwrap_err()
                .to_string()
                .starts_with("RELAY_STATE_URL:")
        );
        assert!(StateUrl::parse("sqlite:").is_err());
    }

    #[test]
    fn serve_settings_follow_the_host() {
        let s = ServeSettings::from_env(env(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "40123"),
            ("FUNCTIONS_APP_ROOT_PATH", "/home/site/wwwroot"),
        ]))
        .unwrap();
        assert_eq!(s.port, 40123);
        assert_eq!(s.policy, PathBuf::from("/home/site/wwwroot/policy.toml"));
        assert!(!s.on_azure);
        let e = ServeSettings::from_env(env(&[])).unwrap_err();
        assert_eq!(e.setting, "FUNCTIONS_CUSTOMHANDLER_PORT");
        let e =
            ServeSettings::from_env(env(&[("FUNCTIONS_CUSTOMHANDLER_PORT", "http")])).unwrap_err();
        assert!(e.message.contains("not a TCP port"));
    }

    #[test]
    fn an_unresolved_key_vault_reference_is_not_a_signing_key() {
        let reference =
            "@Microsoft.KeyVault(VaultName=kv-mlrelay-dev;SecretName=relay-approval-key)";
        assert!(reference.len() >= 32, "long enough to pass as a key");
        let e = ServeSettings::from_env(env(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "1"),
            ("RELAY_APPROVAL_KEY", reference),
        ]))
        .unwrap_err();
        assert_eq!(e.setting, "RELAY_APPROVAL_KEY");
        assert!(e.message.contains("Key Vault Secrets User"), "{e}");
    }

    #[test]
    fn azure_refuses_local_sqlite() {
        let base = [
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "1"),
            ("WEBSITE_INSTANCE_ID", "abc"),
        ];
        let e = ServeSettings::from_env(env(&base)).unwrap_err();
        assert!(e.message.contains("Blob container"), "{e}");
        let e = ServeSettings::from_env(env(&[
            base[0],
            base[1],
            ("RELAY_STATE_URL", "sqlite:/tmp/x.db"),
        ]))
        .unwrap_err();
        assert!(e.message.contains("refusing local SQLite"), "{e}");
        let blob = ("RELAY_STATE_URL", "https://a.blob.core.windows.net/c");
        // Without a key setting, instances share the one kept in the state store (see commands::serve).
        let ok = ServeSettings::from_env(env(&[base[0], base[1], blob])).unwrap();
        assert_eq!(ok.approval_key, None);
        let key = ("RELAY_APPROVAL_KEY", "0123456789abcdef0123456789abcdef");
        let host = ("WEBSITE_HOSTNAME", "func-relay.azurewebsites.net");
        let ok = ServeSettings::from_env(env(&[base[0], base[1], blob, key, host])).unwrap();
        assert!(ok.on_azure);
        assert_eq!(
            ok.public_url.as_deref(),
            Some("https://func-relay.azurewebsites.net")
        );
        let e =
            ServeSettings::from_env(env(&[base[0], ("RELAY_APPROVAL_KEY", "short")])).unwrap_err();
        assert!(e.message.contains("too short"));
    }

    #[test]
    fn a_blank_public_url_is_unset() {
        let host = ("WEBSITE_HOSTNAME", "func-relay.azurewebsites.net");
        let port = ("FUNCTIONS_CUSTOMHANDLER_PORT", "1");
        // App Service keeps a cleared setting as "": the host name still applies (it gave relative links).
        let blank = [port, host, ("RELAY_PUBLIC_URL", " ")];
        let s = ServeSettings::from_env(env(&blank)).unwrap();
        assert_eq!(
            s.public_url.as_deref(),
            Some("https://func-relay.azurewebsites.net")
        );
        let set = [port, ("RELAY_PUBLIC_URL", " https://relay.example/ ")];
        let s = ServeSettings::from_env(env(&set)).unwrap();
        assert_eq!(s.public_url.as_deref(), Some("https://relay.example"));
        let empty = [("RELAY_PUBLIC_URL", "")];
        assert_eq!(public_url(env(&empty)), None);
    }
}
