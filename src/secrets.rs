//! Secrets: values that never print, and references to AWS Secrets Manager in config values.
//!
//! A config string may contain `${aws-secretsmanager:<secret-id>#<field>}` next to `${ENV}`: the
//! secret's value (a JSON object, as Confluent Cloud keys are kept: `{"apiKey": ..., "apiSecret":
//! ...}`) is fetched once per secret id when the configuration is loaded, and the named field is
//! put in its place. Without `#<field>` the whole secret string is used. The key that received a
//! secret is redacted wherever the configuration is printed; the values themselves are held in
//! [`Secret`], whose `Debug` and `Display` print `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{AwsConfig, Config, ConfigError};

/// A value that must never be shown: printed as `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must hand it on (a client's configuration).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The prefix of a secret reference inside `${...}`.
pub const SECRETS_MANAGER_PREFIX: &str = "aws-secretsmanager:";

/// `${aws-secretsmanager:<id>#<field>}`, as found in the config file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretRef {
    pub secret_id: String,
    /// None: the whole secret string.
    pub field: Option<String>,
}

impl SecretRef {
    /// Parses what is between `${` and `}` after the prefix.
    pub fn parse(inner: &str) -> Result<SecretRef, String> {
        let (id, field) = match inner.split_once('#') {
            Some((id, field)) => (id, Some(field)),
            None => (inner, None),
        };
        if id.trim().is_empty() {
            return Err(format!(
                "${{{SECRETS_MANAGER_PREFIX}{inner}}} names no secret; write ${{{SECRETS_MANAGER_PREFIX}<secret id or ARN>#<field>}}"
            ));
        }
        if field.is_some_and(|f| f.trim().is_empty()) {
            return Err(format!(
                "${{{SECRETS_MANAGER_PREFIX}{inner}}} has an empty field name after '#'; name the JSON field, e.g. #apiKey"
            ));
        }
        Ok(SecretRef {
            secret_id: id.to_owned(),
            field: field.map(str::to_owned),
        })
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "secret {:?} field {field:?}", self.secret_id),
            None => write!(f, "secret {:?}", self.secret_id),
        }
    }
}

/// Secret values by reference, fetched before the configuration is deserialized.
pub type Resolved = BTreeMap<SecretRef, Secret>;

/// Reads a configuration file whose values may reference AWS Secrets Manager: the references are
/// collected, each secret fetched once (with the file's `[aws]` settings and the standard
/// credential chain), then the file is parsed with the values in place.
pub async fn load_config(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let origin = path.display().to_string();
    let refs = crate::config::secret_refs(&text, &origin)?;
    if refs.is_empty() {
        return Config::load(path, env);
    }
    let aws = crate::config::aws_section(&text, &origin, env)?;
    let resolved = fetch(&aws, &refs).await.map_err(|message| ConfigError::Invalid {
        path: origin.clone(),
        message,
    })?;
    Config::load_with_secrets(path, env, &resolved)
}

/// Fetches every referenced secret from AWS Secrets Manager (each secret id once).
pub async fn fetch(aws: &AwsConfig, refs: &[SecretRef]) -> Result<Resolved, String> {
    let sdk = crate::aws::sdk_config(aws).await;
    let mut conf = aws_sdk_secretsmanager::config::Builder::from(&sdk);
    if let Some(endpoint) = &aws.endpoint {
        conf = conf.endpoint_url(endpoint);
    }
    let client = aws_sdk_secretsmanager::Client::from_conf(conf.build());
    let where_ = crate::aws::describe(&sdk, aws.endpoint.as_deref());
    let mut strings: BTreeMap<String, Secret> = BTreeMap::new();
    let mut out = Resolved::new();
    for r in refs {
        if !strings.contains_key(&r.secret_id) {
            let value = get_secret_string(&client, &r.secret_id, &where_).await?;
            strings.insert(r.secret_id.clone(), value);
        }
        let whole = &strings[&r.secret_id];
        let value = match &r.field {
            None => whole.clone(),
            Some(field) => pick_field(whole, &r.secret_id, field)?,
        };
        out.insert(r.clone(), value);
    }
    Ok(out)
}

async fn get_secret_string(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
    where_: &str,
) -> Result<Secret, String> {
    use aws_sdk_secretsmanager::error::SdkError;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
    let call = client.get_secret_value().secret_id(id).send();
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .map_err(|_| format!("AWS Secrets Manager ({where_}) did not answer within 20s for secret {id:?}"))?;
    let value = match answer {
        Ok(v) => v,
        Err(SdkError::ServiceError(e)) => {
            return Err(match e.err() {
                GetSecretValueError::ResourceNotFoundException(_) => format!(
                    "secret {id:?} does not exist in AWS Secrets Manager ({where_}); check the secret id and `aws.region`"
                ),
                other => format!(
                    "AWS Secrets Manager ({where_}) refused to give secret {id:?}: {}",
                    crate::aws::service_message(other)
                ),
            });
        }
        Err(e) => {
            return Err(format!(
                "cannot read secret {id:?} from AWS Secrets Manager ({where_}): {}",
                crate::aws::error_chain(&e)
            ));
        }
    };
    match value.secret_string() {
        Some(s) => Ok(Secret::new(s)),
        None => Err(format!(
            "secret {id:?} in AWS Secrets Manager ({where_}) holds binary data, not a string; store a JSON object or a string"
        )),
    }
}

/// The field of a JSON secret. Errors name the secret and the fields, never a value.
fn pick_field(whole: &Secret, id: &str, field: &str) -> Result<Secret, String> {
    let json: serde_json::Value = serde_json::from_str(whole.expose()).map_err(|_| {
        format!("secret {id:?} is not a JSON object, so it has no field {field:?}; reference it without `#{field}` to use the whole value")
    })?;
    let Some(obj) = json.as_object() else {
        return Err(format!("secret {id:?} is JSON but not an object, so it has no field {field:?}"));
    };
    match obj.get(field) {
        Some(serde_json::Value::String(s)) => Ok(Secret::new(s.clone())),
        Some(serde_json::Value::Number(n)) => Ok(Secret::new(n.to_string())),
        Some(serde_json::Value::Bool(b)) => Ok(Secret::new(b.to_string())),
        Some(_) => Err(format!("secret {id:?} field {field:?} is not a string, number or boolean")),
        None => {
            let names: Vec<&str> = obj.keys().map(String::as_str).collect();
            Err(format!(
                "secret {id:?} has no field {field:?} (its fields: {}); fix the name after '#' in the config",
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn references_parse() {
        assert_eq!(
            SecretRef::parse("kafka/prod#apiKey").unwrap(),
            SecretRef { secret_id: "kafka/prod".into(), field: Some("apiKey".into()) }
        );
        assert_eq!(SecretRef::parse("plain").unwrap().field, None);
        assert!(SecretRef::parse("#apiKey").is_err());
        assert!(SecretRef::parse("id#").is_err());
    }

    #[test]
    fn fields_are_picked_without_showing_values() {
        let whole = Secret::new(r#"{"apiKey": "AK", "apiSecret": "s3cr3t", "port": 9093}"#);
        assert_eq!(pick_field(&whole, "k", "apiKey").unwrap().expose(), "AK");
        assert_eq!(pick_field(&whole, "k", "port").unwrap().expose(), "9093");
        let e = pick_field(&whole, "k", "apiSecrte").unwrap_err();
        assert!(e.contains("\"apiSecrte\"") && e.contains("apiKey, apiSecret, port"), "{e}");
        assert!(!e.contains("s3cr3t") && !e.contains("AK\""), "{e}");
        let e = pick_field(&Secret::new("not json s3cr3t"), "k", "f").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
