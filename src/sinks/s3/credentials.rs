//! The S3 sink's credentials: the standard AWS chain, implemented on
//! `reqwest` (see docs/sinks/s3.md for why not `aws-config`).
//!
//! The first source that is configured wins, in this order:
//!
//! 1. the sink's `access_key_id_file` / `secret_access_key_file`;
//! 2. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`;
//! 3. the shared files: `AWS_SHARED_CREDENTIALS_FILE` (`~/.aws/credentials`)
//!    and `AWS_CONFIG_FILE` (`~/.aws/config`, `[profile x]` sections), the
//!    profile from `credentials.profile`, else `AWS_PROFILE`, else `default`;
//!    static keys, or `role_arn` + `web_identity_token_file`;
//! 4. a web identity token (EKS IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE`,
//!    `AWS_ROLE_ARN`, `AWS_ROLE_SESSION_NAME`, exchanged with STS
//!    `AssumeRoleWithWebIdentity` (an unsigned POST);
//! 5. container credentials (EKS Pod Identity, ECS):
//!    `AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI`, with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `_TOKEN`;
//! 6. EC2 instance metadata, IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT`,
//!    off with `AWS_EC2_METADATA_DISABLED=true`).
//!
//! Temporary credentials are fetched again `credentials.refresh_before`
//! their expiry by a task of their own; requests keep signing with the
//! current ones meanwhile, so a refresh never stalls a delivery.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rusty_s3::Credentials;
use serde::Deserialize;

use crate::config::{duration, ConfigError, Validate};

/// The STS API version of `AssumeRoleWithWebIdentity`.
const STS_VERSION: &str = "2011-06-15";

/// The ECS/EKS container credentials host for `_RELATIVE_URI`.
const ECS_HOST: &str = "http://169.254.170.2";

/// The instance metadata service.
const IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// Longest wait for one answer of a credentials endpoint.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The `credentials` table of the S3 sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CredentialsConfig {
    /// The profile of the shared files (else `AWS_PROFILE`, else `default`).
    pub(crate) profile: Option<String>,
    /// STS endpoint for web identity (else `AWS_ENDPOINT_URL_STS`, else
    /// `https://sts.<region>.amazonaws.com`).
    pub(crate) sts_endpoint: Option<String>,
    /// Temporary credentials are fetched again this long before they
    /// expire (or halfway through a shorter life).
    #[serde(deserialize_with = "duration")]
    pub(crate) refresh_before: Duration,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            profile: None,
            sts_endpoint: None,
            refresh_before: Duration::from_secs(300),
        }
    }
}

impl Validate for CredentialsConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if let Some(e) = &self.sts_endpoint {
            if let Err(why) = http_url(e) {
                errors.push(ConfigError::at(path, "sts_endpoint", why));
            }
        }
        if self.profile.as_deref() == Some("") {
            errors.push(ConfigError::at(path, "profile", "must not be empty"));
        }
        if self.refresh_before.is_zero() {
            errors.push(ConfigError::at(path, "refresh_before", "must be above 0"));
        }
    }
}

/// `text` as an http(s) URL, or why not.
pub(crate) fn http_url(text: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(text) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(u),
        Ok(u) => Err(format!("must be an http or https URL, not {}", u.scheme())),
        Err(x) => Err(format!("invalid URL {text:?}: {x}")),
    }
}

/// Why no credentials could be had. Never holds a secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    /// A file could not be read.
    #[error("{what}: cannot read {}: {error}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// A profile is incomplete or missing.
    #[error("profile {profile:?}: {why}")]
    Profile { profile: String, why: String },
    /// A credentials endpoint failed.
    #[error("{source_name}: {why}")]
    Fetch { source_name: &'static str, why: String },
    /// Nothing in the chain is configured.
    #[error(
        "no S3 credentials: set access_key_id_file and secret_access_key_file, AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, a profile in AWS_SHARED_CREDENTIALS_FILE or AWS_CONFIG_FILE, \
         AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI, \
         or run where EC2 instance metadata answers ({imds})"
    )]
    Nothing { imds: String },
    /// A setting is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// One set of credentials, and when it expires.
#[derive(Clone)]
pub(crate) struct Secret {
    key_id: String,
    secret: String,
    token: Option<String>,
    expires: Option<jiff::Timestamp>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key id names the credentials; the secret and token never show.
        f.debug_struct("Secret")
            .field("key_id", &self.key_id)
            .field("secret", &"[REDACTED]")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("expires", &self.expires.map(|t| t.to_string()))
            .finish()
    }
}

impl Secret {
    fn into_credentials(self) -> Credentials {
        match self.token {
            Some(t) => Credentials::new_with_token(self.key_id, self.secret, t),
            None => Credentials::new(self.key_id, self.secret),
        }
    }
}

/// Where the credentials come from.
#[derive(Clone, PartialEq)]
pub(crate) enum Source {
    /// Keys that do not expire: the sink's files, the environment or a
    /// profile.
    Static { from: String, secret: SecretEq },
    /// STS `AssumeRoleWithWebIdentity` with a token file.
    WebIdentity {
        role_arn: String,
        token_file: PathBuf,
        session_name: String,
        sts_endpoint: String,
    },
    /// The ECS / EKS Pod Identity agent.
    Container {
        url: String,
        token: Option<String>,
        token_file: Option<PathBuf>,
    },
    /// EC2 instance metadata, IMDSv2.
    Imds { endpoint: String },
}

/// A [`Secret`] compared by value (for tests of the chain's choice).
#[derive(Clone)]
pub(crate) struct SecretEq(Secret);

impl PartialEq for SecretEq {
    fn eq(&self, o: &SecretEq) -> bool {
        (&self.0.key_id, &self.0.secret, &self.0.token) == (&o.0.key_id, &o.0.secret, &o.0.token)
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a key, a secret or a token.
        f.write_str(&self.name())
    }
}

impl Source {
    /// The source as logs name it: no secret in it.
    pub(crate) fn name(&self) -> String {
        match self {
            Source::Static { from, .. } => from.clone(),
            Source::WebIdentity { role_arn, .. } => format!("web identity ({role_arn})"),
            Source::Container { url, .. } => format!("container credentials ({url})"),
            Source::Imds { endpoint } => format!("instance metadata ({endpoint})"),
        }
    }
}

/// What the chain reads from its process: environment variables and the
/// home directory (a closure, so tests need not change the process's).
pub(crate) type Env<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// The process environment, empty values as unset.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The sink settings the chain reads.
pub(crate) struct ChainInput<'a> {
    pub(crate) access_key_id_file: Option<&'a Path>,
    pub(crate) secret_access_key_file: Option<&'a Path>,
    pub(crate) session_token_file: Option<&'a Path>,
    pub(crate) region: &'a str,
    pub(crate) config: &'a CredentialsConfig,
}

fn read_trimmed(path: &Path, what: &'static str) -> Result<String, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|error| CredentialError::File {
        what,
        path: path.to_owned(),
        error,
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(CredentialError::Invalid(format!("{what}: {} is empty", path.display())));
    }
    Ok(text.to_owned())
}

/// Picks the first configured source of the chain. Reads files and the
/// environment only; fetching is [`Source::fetch`].
pub(crate) fn choose(input: &ChainInput, env: Env) -> Result<Source, CredentialError> {
    // 1. The sink's own files.
    match (input.access_key_id_file, input.secret_access_key_file) {
        (Some(k), Some(s)) => {
            let token = match input.session_token_file {
                Some(t) => Some(read_trimmed(t, "session_token_file")?),
                None => env("AWS_SESSION_TOKEN"),
            };
            let secret = Secret {
                key_id: read_trimmed(k, "access_key_id_file")?,
                secret: read_trimmed(s, "secret_access_key_file")?,
                token,
                expires: None,
            };
            return Ok(Source::Static {
                from: "access_key_id_file and secret_access_key_file".into(),
                secret: SecretEq(secret),
            });
        }
        (None, None) => {}
        _ => {
            return Err(CredentialError::Invalid(
                "access_key_id_file and secret_access_key_file go together".into(),
            ))
        }
    }
    // 2. The environment.
    if let (Some(k), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        let secret = Secret {
            key_id: k,
            secret: s,
            token: env("AWS_SESSION_TOKEN"),
            expires: None,
        };
        return Ok(Source::Static {
            from: "environment (AWS_ACCESS_KEY_ID)".into(),
            secret: SecretEq(secret),
        });
    }
    let sts_endpoint = input
        .config
        .sts_endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_STS"))
        .unwrap_or_else(|| {
            let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"));
            format!("https://sts.{}.amazonaws.com", region.as_deref().unwrap_or(input.region))
        });
    let session_name = || env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| format!("sluice-{}", jiff::Timestamp::now().as_second()));
    // 3. The shared credentials and config files.
    if let Some(source) = from_profile(input, env, &sts_endpoint, &session_name)? {
        return Ok(source);
    }
    // 4. Web identity (IRSA).
    if let (Some(file), Some(role)) = (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN")) {
        return Ok(Source::WebIdentity {
            role_arn: role,
            token_file: file.into(),
            session_name: session_name(),
            sts_endpoint,
        });
    }
    // 5. Container credentials (ECS, EKS Pod Identity).
    let container = match (
        env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        env("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ) {
        (Some(rel), _) => Some(format!("{ECS_HOST}{rel}")),
        (None, Some(full)) => {
            container_url_allowed(&full).map_err(CredentialError::Invalid)?;
            Some(full)
        }
        (None, None) => None,
    };
    if let Some(url) = container {
        return Ok(Source::Container {
            url,
            token: env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            token_file: env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from),
        });
    }
    // 6. Instance metadata, unless turned off.
    let endpoint = env("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| IMDS_ENDPOINT.to_owned());
    if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(CredentialError::Nothing {
            imds: "disabled by AWS_EC2_METADATA_DISABLED".into(),
        });
    }
    Ok(Source::Imds {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
    })
}

/// A full container credentials URI must be https, or http to a loopback
/// address or the ECS / EKS Pod Identity agent (as the AWS SDKs require).
fn container_url_allowed(full: &str) -> Result<(), String> {
    let url = http_url(full).map_err(|e| format!("AWS_CONTAINER_CREDENTIALS_FULL_URI: {e}"))?;
    if url.scheme() == "https" {
        return Ok(());
    }
    let host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let ok = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.octets() == [169, 254, 170, 2] || ip.octets() == [169, 254, 170, 23],
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || ip.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23],
        Err(_) => host == "localhost",
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI: plain http only to loopback or the container agent, not {full}"
        ))
    }
}

/// The profile of the shared files, if either file has it.
fn from_profile(
    input: &ChainInput,
    env: Env,
    sts_endpoint: &str,
    session_name: &dyn Fn() -> String,
) -> Result<Option<Source>, CredentialError> {
    let explicit = input.config.profile.clone().or_else(|| env("AWS_PROFILE"));
    let profile = explicit.clone().unwrap_or_else(|| "default".to_owned());
    let home = env("HOME");
    let file = |var: &str, default: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| Path::new(h).join(default)))
    };
    let read = |path: Option<PathBuf>, what: &'static str| -> Result<Option<String>, CredentialError> {
        match path {
            Some(p) => match std::fs::read_to_string(&p) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(CredentialError::File { what, path: p, error }),
            },
            None => Ok(None),
        }
    };
    let creds_text = read(
        file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
        "the shared credentials file",
    )?;
    let config_text = read(file("AWS_CONFIG_FILE", ".aws/config"), "the shared config file")?;
    // The credentials file names sections after the profile; the config
    // file `[profile x]`, except `[default]`.
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut found = false;
    if let Some(text) = &config_text {
        if let Some(section) = ini_section(text, &profile, true) {
            found = true;
            keys.extend(section);
        }
    }
    if let Some(text) = &creds_text {
        if let Some(section) = ini_section(text, &profile, false) {
            found = true;
            keys.extend(section); // later wins: the credentials file over the config file
        }
    }
    if !found {
        return match explicit {
            Some(p) => Err(CredentialError::Profile {
                profile: p,
                why: "not in the shared credentials or config file".into(),
            }),
            None => Ok(None),
        };
    }
    let get = |k: &str| {
        keys.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    if let (Some(k), Some(s)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
        let secret = Secret {
            key_id: k,
            secret: s,
            token: get("aws_session_token"),
            expires: None,
        };
        return Ok(Some(Source::Static {
            from: format!("profile {profile:?} of the shared files"),
            secret: SecretEq(secret),
        }));
    }
    if let (Some(role), Some(file)) = (get("role_arn"), get("web_identity_token_file")) {
        return Ok(Some(Source::WebIdentity {
            role_arn: role,
            token_file: file.into(),
            session_name: get("role_session_name").unwrap_or_else(session_name),
            sts_endpoint: sts_endpoint.to_owned(),
        }));
    }
    let why = if get("source_profile").is_some() || get("sso_session").is_some() || get("credential_process").is_some() {
        "source_profile, SSO and credential_process are not supported: use static keys or web_identity_token_file"
    } else {
        "has neither aws_access_key_id and aws_secret_access_key nor role_arn and web_identity_token_file"
    };
    match explicit {
        Some(p) => Err(CredentialError::Profile {
            profile: p,
            why: why.into(),
        }),
        // An unusable `default` profile does not end the chain.
        None => Ok(None),
    }
}

/// The keys of section `profile` of an INI file (AWS's dialect: `#` and
/// `;` comments, `key = value`, `[profile x]` in the config file). None if
/// the file has no such section.
pub(crate) fn ini_section(text: &str, profile: &str, config_file: bool) -> Option<Vec<(String, String)>> {
    let mut out: Option<Vec<(String, String)>> = None;
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = if config_file && name != "default" {
                match name.strip_prefix("profile") {
                    Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim(),
                    _ => {
                        inside = false;
                        continue;
                    }
                }
            } else {
                name
            };
            inside = name == profile;
            if inside && out.is_none() {
                out = Some(Vec::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        if let (Some(keys), Some((k, v))) = (out.as_mut(), line.split_once('=')) {
            keys.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    out
}

/// The text of the first `<tag>…</tag>` in `xml`, entities decoded.
pub(crate) fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml.get(start..)?.find(&close)?;
    let raw = xml.get(start..end)?.trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// The credentials in STS's `AssumeRoleWithWebIdentity` answer.
pub(crate) fn parse_sts(xml: &str) -> Result<Secret, String> {
    let creds = xml_text(xml, "Credentials").ok_or("the answer has no Credentials")?;
    let get = |t: &str| {
        xml_text(&creds, t)
            .filter(|v| !v.is_empty())
            .ok_or(format!("the answer has no {t}"))
    };
    Ok(Secret {
        key_id: get("AccessKeyId")?,
        secret: get("SecretAccessKey")?,
        token: Some(get("SessionToken")?),
        expires: Some(parse_time(&get("Expiration")?)?),
    })
}

/// The JSON the container endpoint and instance metadata answer.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonCredentials {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

/// The credentials in a container or instance-metadata answer.
pub(crate) fn parse_json(text: &str) -> Result<Secret, String> {
    let j: JsonCredentials = serde_json::from_str(text).map_err(|e| format!("unreadable answer: {e}"))?;
    if let Some(code) = j.code.as_deref().filter(|c| *c != "Success") {
        return Err(format!("answered {code}: {}", j.message.unwrap_or_default()));
    }
    let non_empty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let (Some(key_id), Some(secret)) = (non_empty(j.access_key_id), non_empty(j.secret_access_key)) else {
        return Err("the answer has no AccessKeyId and SecretAccessKey".into());
    };
    Ok(Secret {
        key_id,
        secret,
        token: j.token.filter(|t| !t.is_empty()),
        expires: j.expiration.as_deref().map(parse_time).transpose()?,
    })
}

fn parse_time(text: &str) -> Result<jiff::Timestamp, String> {
    text.trim()
        .parse::<jiff::Timestamp>()
        .map_err(|e| format!("unreadable Expiration {text:?}: {e}"))
}

/// An answer's body if it is a success, else an error with its excerpt.
async fn body(source_name: &'static str, resp: Result<reqwest::Response, reqwest::Error>) -> Result<String, CredentialError> {
    let fail = |why: String| CredentialError::Fetch { source_name, why };
    let resp = resp.map_err(|e| fail(crate::sinks::http::error_chain(&e)))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| fail(crate::sinks::http::error_chain(&e)))?;
    if !status.is_success() {
        return Err(fail(format!("{status}: {}", crate::sinks::http::excerpt(text.trim()))));
    }
    Ok(text)
}

impl Source {
    /// Fetches (or returns) the credentials.
    pub(crate) async fn fetch(&self, http: &reqwest::Client) -> Result<Secret, CredentialError> {
        match self {
            Source::Static { secret, .. } => Ok(secret.0.clone()),
            Source::WebIdentity {
                role_arn,
                token_file,
                session_name,
                sts_endpoint,
            } => {
                const NAME: &str = "STS AssumeRoleWithWebIdentity";
                // Read each time: the kubelet rotates the token.
                let token = read_trimmed(token_file, "AWS_WEB_IDENTITY_TOKEN_FILE")?;
                let form = [
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", STS_VERSION),
                    ("RoleArn", role_arn.as_str()),
                    ("RoleSessionName", session_name.as_str()),
                    ("WebIdentityToken", token.as_str()),
                ];
                let resp = http.post(sts_endpoint).form(&form).send().await;
                let text = body(NAME, resp).await?;
                parse_sts(&text).map_err(|why| CredentialError::Fetch { source_name: NAME, why })
            }
            Source::Container { url, token, token_file } => {
                const NAME: &str = "container credentials";
                let auth = match token_file {
                    Some(f) => Some(read_trimmed(f, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")?),
                    None => token.clone(),
                };
                let mut req = http.get(url);
                if let Some(a) = auth {
                    let mut v = reqwest::header::HeaderValue::from_str(&a)
                        .map_err(|_| CredentialError::Invalid("the container authorization token is not a valid header".into()))?;
                    v.set_sensitive(true);
                    req = req.header(reqwest::header::AUTHORIZATION, v);
                }
                let text = body(NAME, req.send().await).await?;
                parse_json(&text).map_err(|why| CredentialError::Fetch { source_name: NAME, why })
            }
            Source::Imds { endpoint } => {
                const NAME: &str = "instance metadata";
                let token = body(
                    NAME,
                    http.put(format!("{endpoint}/latest/api/token"))
                        .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
                        .send()
                        .await,
                )
                .await?;
                let mut token = reqwest::header::HeaderValue::from_str(token.trim())
                    .map_err(|_| CredentialError::Invalid("instance metadata: the session token is not a valid header".into()))?;
                token.set_sensitive(true);
                let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
                let roles = body(NAME, http.get(&base).header("x-aws-ec2-metadata-token", token.clone()).send().await).await?;
                let role = roles.lines().map(str::trim).find(|l| !l.is_empty()).ok_or(CredentialError::Fetch {
                    source_name: NAME,
                    why: "the instance has no IAM role".into(),
                })?;
                let text = body(
                    NAME,
                    http.get(format!("{base}{role}"))
                        .header("x-aws-ec2-metadata-token", token)
                        .send()
                        .await,
                )
                .await?;
                parse_json(&text).map_err(|why| CredentialError::Fetch { source_name: NAME, why })
            }
        }
    }
}

/// The credentials requests sign with, kept fresh.
pub(crate) struct CredentialCache {
    current: RwLock<Arc<Credentials>>,
    source: Source,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl CredentialCache {
    /// Chooses the source, fetches the first credentials and, when they
    /// expire, starts the task that refreshes them (it ends with the cache).
    pub(crate) async fn start(input: &ChainInput<'_>, env: Env<'_>, sink: Arc<str>) -> Result<Arc<CredentialCache>, CredentialError> {
        let source = choose(input, env)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CredentialError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        let first = source.fetch(&http).await.map_err(|e| match (&source, e) {
            (Source::Imds { endpoint }, CredentialError::Fetch { why, .. }) => CredentialError::Nothing {
                imds: format!("{endpoint}: {why}"),
            },
            (_, e) => e,
        })?;
        let expires = first.expires;
        tracing::info!(sink = %sink, source = %source.name(), key_id = %first.key_id,
            expires = %expires.map(|t| t.to_string()).unwrap_or_else(|| "never".into()), "S3 credentials loaded");
        let cache = Arc::new(CredentialCache {
            current: RwLock::new(Arc::new(first.into_credentials())),
            source,
        });
        if let Some(at) = expires {
            tokio::spawn(refresh(Arc::downgrade(&cache), http, sink, at, input.config.refresh_before));
        }
        Ok(cache)
    }

    /// The credentials to sign the next request with.
    pub(crate) fn get(&self) -> Arc<Credentials> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The chosen source, as logs name it.
    pub(crate) fn source_name(&self) -> String {
        self.source.name()
    }

    fn set(&self, c: Credentials) {
        let c = Arc::new(c);
        match self.current.write() {
            Ok(mut g) => *g = c,
            Err(poisoned) => *poisoned.into_inner() = c,
        }
    }
}

/// How long to wait before fetching credentials that expire at `expires`:
/// `before` ahead of it, or halfway when they live less than that; at
/// least a second.
pub(crate) fn refresh_delay(now: jiff::Timestamp, expires: jiff::Timestamp, before: Duration) -> Duration {
    let left = Duration::try_from(expires.duration_since(now)).unwrap_or(Duration::ZERO);
    let wait = if left > before { left - before } else { left / 2 };
    wait.max(Duration::from_secs(1))
}

/// Refreshes the credentials before each expiry while the cache lives.
async fn refresh(cache: Weak<CredentialCache>, http: reqwest::Client, sink: Arc<str>, mut expires: jiff::Timestamp, before: Duration) {
    loop {
        tokio::time::sleep(refresh_delay(jiff::Timestamp::now(), expires, before)).await;
        let Some(c) = cache.upgrade() else { return };
        match c.source.fetch(&http).await {
            Ok(s) => {
                tracing::info!(sink = %sink, source = %c.source.name(), key_id = %s.key_id,
                    expires = %s.expires.map(|t| t.to_string()).unwrap_or_else(|| "never".into()), "S3 credentials refreshed");
                let next = s.expires;
                c.set(s.into_credentials());
                match next {
                    Some(t) => expires = t,
                    None => return,
                }
            }
            Err(e) => {
                // Keep signing with the current ones; try again soon (the
                // delay halves the time left, down to a second).
                tracing::warn!(sink = %sink, source = %c.source.name(), error = %e,
                    "could not refresh the S3 credentials; keeping the current ones");
            }
        }
    }
}

/// Fuzzing entry point: bytes through the chain's parsers (the shared
/// files' INI, STS's XML, the container / instance-metadata JSON and the
/// full container URI check). Nothing may panic; what parses must hold
/// non-empty keys.
#[cfg(feature = "fuzzing")]
pub fn fuzz_credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for (profile, config_file) in [("default", false), ("default", true), ("ci", true)] {
        if let Some(keys) = ini_section(&text, profile, config_file) {
            assert!(keys.iter().all(|(k, _)| !k.contains('\n')));
        }
    }
    if let Ok(s) = parse_sts(&text) {
        assert!(!s.key_id.is_empty() && !s.secret.is_empty() && s.expires.is_some());
    }
    if let Ok(s) = parse_json(&text) {
        assert!(!s.key_id.is_empty() && !s.secret.is_empty());
    }
    let _ = container_url_allowed(&text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn input(cfg: &CredentialsConfig) -> ChainInput<'_> {
        ChainInput {
            access_key_id_file: None,
            secret_access_key_file: None,
            session_token_file: None,
            region: "eu-west-1",
            config: cfg,
        }
    }

    #[test]
    fn the_environment_comes_before_profiles_and_web_identity() {
        let cfg = CredentialsConfig::default();
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKENV"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
        ]);
        let s = choose(&input(&cfg), &env).unwrap();
        assert!(s.name().starts_with("environment"), "{s:?}");
    }

    #[test]
    fn a_named_profile_is_read_from_the_config_file_and_the_credentials_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = d\n[ci]\naws_secret_access_key = fromcreds\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "# c\n[profile ci]\naws_access_key_id = AKCI\naws_secret_access_key = fromconfig\n[ci]\naws_access_key_id = NOT\n",
        )
        .unwrap();
        let cfg = CredentialsConfig {
            profile: Some("ci".into()),
            ..Default::default()
        };
        let env = env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ]);
        let Source::Static { secret, .. } = choose(&input(&cfg), &env).unwrap() else {
            panic!("static keys expected")
        };
        assert_eq!((secret.0.key_id.as_str(), secret.0.secret.as_str()), ("AKCI", "fromcreds"));
    }

    #[test]
    fn a_profile_that_is_asked_for_and_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(&creds, "[default]\naws_access_key_id = A\naws_secret_access_key = B\n").unwrap();
        let cfg = CredentialsConfig::default();
        let env = env_of(&[("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()), ("AWS_PROFILE", "nope")]);
        let e = choose(&input(&cfg), &env).unwrap_err().to_string();
        assert!(e.contains("\"nope\""), "{e}");
    }

    #[test]
    fn web_identity_then_container_then_instance_metadata() {
        let cfg = CredentialsConfig::default();
        let web = env_of(&[
            ("HOME", "/nonexistent"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
        ]);
        match choose(&input(&cfg), &web).unwrap() {
            Source::WebIdentity { sts_endpoint, .. } => assert_eq!(sts_endpoint, "https://sts.eu-west-1.amazonaws.com"),
            s => panic!("{s:?}"),
        }
        let ecs = env_of(&[("HOME", "/nonexistent"), ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x")]);
        match choose(&input(&cfg), &ecs).unwrap() {
            Source::Container { url, .. } => assert_eq!(url, "http://169.254.170.2/v2/x"),
            s => panic!("{s:?}"),
        }
        let far = env_of(&[
            ("HOME", "/nonexistent"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://10.1.2.3/creds"),
        ]);
        assert!(choose(&input(&cfg), &far).is_err(), "plain http off the host is refused");
        let none = env_of(&[("HOME", "/nonexistent")]);
        assert_eq!(
            choose(&input(&cfg), &none).unwrap(),
            Source::Imds {
                endpoint: "http://169.254.169.254".into()
            }
        );
        let off = env_of(&[("HOME", "/nonexistent"), ("AWS_EC2_METADATA_DISABLED", "true")]);
        assert!(matches!(choose(&input(&cfg), &off), Err(CredentialError::Nothing { .. })));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s =
            parse_json(r#"{"AccessKeyId":"AKID","SecretAccessKey":"TOPSECRET","Token":"TOKENVALUE","Expiration":"2030-01-01T00:00:00Z"}"#)
                .unwrap();
        let text = format!(
            "{s:?} {:?}",
            Source::Static {
                from: "x".into(),
                secret: SecretEq(s.clone())
            }
        );
        assert!(!text.contains("TOPSECRET") && !text.contains("TOKENVALUE"), "{text}");
        assert!(text.contains("AKID"));
    }

    #[test]
    fn sts_answers_are_read_with_their_expiry() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <SessionToken>tok&amp;en</SessionToken><SecretAccessKey>sec</SecretAccessKey>\
            <Expiration>2030-01-01T00:00:00.000Z</Expiration><AccessKeyId>ASIA1</AccessKeyId>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let s = parse_sts(xml).unwrap();
        assert_eq!((s.key_id.as_str(), s.token.as_deref()), ("ASIA1", Some("tok&en")));
        assert_eq!(s.expires.unwrap().as_second(), 1_893_456_000);
        assert!(parse_sts("<Error><Code>AccessDenied</Code></Error>").is_err());
        assert!(parse_json(r#"{"Code":"Failure","Message":"no role"}"#).is_err());
    }

    #[test]
    fn refreshes_come_before_expiry_or_halfway_for_short_lives() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| jiff::Timestamp::from_second(1_000_000 + s).unwrap();
        let five_min = Duration::from_secs(300);
        assert_eq!(refresh_delay(now, at(3600), five_min), Duration::from_secs(3300));
        assert_eq!(refresh_delay(now, at(120), five_min), Duration::from_secs(60));
        assert_eq!(refresh_delay(now, at(-5), five_min), Duration::from_secs(1));
    }
}
