//! The `switchyard` configuration: defaults, then a TOML file, then `SWITCHYARD_*` environment
//! variables, then command-line settings; every layer is a map of key -> string, validated
//! together so every problem is reported at once. Environment is read only here.
//!
//! Keys (also the Helm values under `controlPlane.config`):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `xds_address` | `0.0.0.0:15010` | plaintext xDS/CA gRPC |
//! | `xds_tls_address` | `0.0.0.0:15012` | xDS/CA gRPC over TLS (server certificate from the CA) |
//! | `admin_address` | `0.0.0.0:15014` | HTTP admin: metrics, health, debug |
//! | `config_dir` | (required) | directory of Kubernetes YAML manifests |
//! | `ca_dir` | `switchyard-ca` | CA root (generated on first start) and token key |
//! | `trust_domain` | `cluster.local` | SPIFFE trust domain |
//! | `cluster_domain` | `cluster.local` | Kubernetes DNS domain |
//! | `default_mode` | `ztunnel` | dataplane of unlabelled namespaces |
//! | `root_namespace` | `switchyard-system` | namespace of mesh-wide policies |
//! | `cert_default_ttl_s` | `86400` | workload certificate lifetime when the CSR asks for none |
//! | `cert_max_ttl_s` | `86400` | longest workload certificate lifetime granted |
//! | `kube_api` | (off) | Kubernetes API for TokenReview of service-account tokens: `default` (in-cluster or kubeconfig) or an `http(s)://` URL (e.g. `kubectl proxy`) |
//! | `push_debounce_ms` | `100` | quiet time before a model change is pushed |
//! | `source_debounce_ms` | `100` | quiet time before a changed directory is re-read |
//! | `max_request_bytes` | `4194304` | largest xDS request accepted |
//! | `connect_timeout_ms` | `1000` | upstream connect timeout in generated clusters |
//! | `log_format` | `text` | `text` or `json` |
//! | `test_hooks` | `false` | enables `/debug/test/*` (tests only) |

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_model::{DataplaneMode, MeshConfig};

/// Every key, with its default (`None`: no default).
const KEYS: &[(&str, Option<&str>)] = &[
    ("xds_address", Some("0.0.0.0:15010")),
    ("xds_tls_address", Some("0.0.0.0:15012")),
    ("admin_address", Some("0.0.0.0:15014")),
    ("config_dir", None),
    ("ca_dir", Some("switchyard-ca")),
    ("trust_domain", Some("cluster.local")),
    ("cluster_domain", Some("cluster.local")),
    ("default_mode", Some("ztunnel")),
    ("root_namespace", Some("switchyard-system")),
    ("cert_default_ttl_s", Some("86400")),
    ("cert_max_ttl_s", Some("86400")),
    ("kube_api", Some("")),
    ("push_debounce_ms", Some("100")),
    ("source_debounce_ms", Some("100")),
    ("max_request_bytes", Some("4194304")),
    ("connect_timeout_ms", Some("1000")),
    ("log_format", Some("text")),
    ("test_hooks", Some("false")),
];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Plaintext gRPC listen address.
    pub xds_address: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_address: SocketAddr,
    /// xDS/CA gRPC over TLS.
    pub xds_tls_address: SocketAddr,
    /// Workload certificate lifetime when none is asked for.
    pub cert_default_ttl: Duration,
    /// Longest workload certificate lifetime.
    pub cert_max_ttl: Duration,
    /// Kubernetes API for TokenReview: empty (off), `default`, or a URL.
    pub kube_api: String,
    /// Manifest directory.
    pub config_dir: PathBuf,
    /// CA directory.
    pub ca_dir: PathBuf,
    /// Mesh-wide settings.
    pub mesh: MeshConfig,
    /// Push debounce.
    pub push_debounce: Duration,
    /// Source debounce.
    pub source_debounce: Duration,
    /// Largest request.
    pub max_request_bytes: usize,
    /// Cluster connect timeout.
    pub connect_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Test hooks on.
    pub test_hooks: bool,
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Built in.
    Default,
    /// The config file.
    File,
    /// An environment variable.
    Env,
    /// The command line.
    Cli,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Default => "default",
            Layer::File => "config file",
            Layer::Env => "environment",
            Layer::Cli => "command line",
        })
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Key.
    pub key: String,
    /// Layer that set the bad value.
    pub layer: Option<Layer>,
    /// What is wrong.
    pub message: String,
}

/// All problems found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:{}", .0.iter().map(|p| match p.layer {
    Some(l) => format!("\n  - {} (from {}): {}", p.key, l, p.message),
    None => format!("\n  - {}: {}", p.key, p.message),
}).collect::<String>())]
pub struct ConfigError(pub Vec<ConfigProblem>);

/// Raw layered values.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    values: BTreeMap<String, (String, Layer)>,
    problems: Vec<ConfigProblem>,
}

impl RawConfig {
    /// Starts from the defaults.
    pub fn defaults() -> Self {
        let mut raw = RawConfig::default();
        for (k, v) in KEYS {
            if let Some(v) = v {
                raw.values
                    .insert(k.to_string(), (v.to_string(), Layer::Default));
            }
        }
        raw
    }

    fn set(&mut self, key: &str, value: String, layer: Layer) {
        if KEYS.iter().any(|(k, _)| *k == key) {
            self.values.insert(key.to_string(), (value, layer));
        } else {
            self.problems.push(ConfigProblem {
                key: key.to_string(),
                layer: Some(layer),
                message: format!(
                    "unknown key; known keys: {}",
                    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }

    /// Applies a TOML document (top-level keys only; unknown keys are problems).
    pub fn file(mut self, path: &Path, text: &str) -> Self {
        match text.parse::<toml::Table>() {
            Ok(table) => {
                for (k, v) in table {
                    let s = match v {
                        toml::Value::String(s) => s,
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        other => {
                            self.problems.push(ConfigProblem {
                                key: k.clone(),
                                layer: Some(Layer::File),
                                message: format!(
                                    "expected a string, number or boolean, got {}",
                                    other.type_str()
                                ),
                            });
                            continue;
                        }
                    };
                    self.set(&k, s, Layer::File);
                }
            }
            Err(e) => self.problems.push(ConfigProblem {
                key: path.display().to_string(),
                layer: Some(Layer::File),
                message: format!("not valid TOML: {e}"),
            }),
        }
        self
    }

    /// Applies `SWITCHYARD_<KEY>` variables from `env`.
    pub fn env<'a>(mut self, env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        for (k, v) in env {
            let Some(key) = k.strip_prefix("SWITCHYARD_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            // Variables of other tools may share the prefix; only known keys count.
            if KEYS.iter().any(|(k, _)| *k == key) {
                self.set(&key, v.to_string(), Layer::Env);
            }
        }
        self
    }

    /// Applies command-line `key=value` settings.
    pub fn cli<'a>(mut self, settings: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        for (k, v) in settings {
            self.set(k, v, Layer::Cli);
        }
        self
    }

    /// Validates every key.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut problems = self.problems.clone();
        let get = |k: &str| self.values.get(k).cloned();
        let mut parse = |k: &str, f: &dyn Fn(&str) -> Result<(), String>| {
            if let Some((v, layer)) = get(k)
                && let Err(message) = f(&v)
            {
                problems.push(ConfigProblem {
                    key: k.to_string(),
                    layer: Some(layer),
                    message,
                });
            }
        };
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map(|_| ())
                .map_err(|e| format!("{v:?} is not host:port: {e}"))
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map(|_| ())
                .map_err(|_| format!("{v:?} is not a non-negative integer"))
        };
        let boolean = |v: &str| {
            v.parse::<bool>()
                .map(|_| ())
                .map_err(|_| format!("{v:?} is not true or false"))
        };
        parse("xds_address", &addr);
        parse("admin_address", &addr);
        parse("xds_tls_address", &addr);
        parse("cert_default_ttl_s", &num);
        parse("cert_max_ttl_s", &num);
        parse("kube_api", &|v| {
            if v.is_empty()
                || v == "default"
                || v.starts_with("http://")
                || v.starts_with("https://")
            {
                Ok(())
            } else {
                Err(format!(
                    "{v:?} is not empty, `default` or an http(s):// URL"
                ))
            }
        });
        parse("push_debounce_ms", &num);
        parse("source_debounce_ms", &num);
        parse("max_request_bytes", &num);
        parse("connect_timeout_ms", &num);
        parse("test_hooks", &boolean);
        parse("default_mode", &|v| {
            v.parse::<DataplaneMode>()
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        parse("log_format", &|v| match v {
            "text" | "json" => Ok(()),
            _ => Err(format!("{v:?} is not text or json")),
        });
        parse("trust_domain", &|v| {
            let ok = !v.is_empty()
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
                });
            if ok {
                Ok(())
            } else {
                Err(format!("{v:?} is not a valid trust domain"))
            }
        });
        if get("config_dir").is_none() {
            problems.push(ConfigProblem {
                key: "config_dir".into(),
                layer: None,
                message: "required: the directory of Kubernetes manifests to serve (--config-dir)"
                    .into(),
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        // Everything parsed above; the fallbacks below are unreachable but keep this total.
        let s = |k: &str| get(k).map(|(v, _)| v).unwrap_or_default();
        let n = |k: &str| s(k).parse::<u64>().unwrap_or_default();
        Ok(Config {
            xds_address: s("xds_address").parse().map_err(|_| ConfigError(vec![]))?,
            admin_address: s("admin_address")
                .parse()
                .map_err(|_| ConfigError(vec![]))?,
            xds_tls_address: s("xds_tls_address")
                .parse()
                .map_err(|_| ConfigError(vec![]))?,
            cert_default_ttl: Duration::from_secs(n("cert_default_ttl_s")),
            cert_max_ttl: Duration::from_secs(n("cert_max_ttl_s")),
            kube_api: s("kube_api"),
            config_dir: PathBuf::from(s("config_dir")),
            ca_dir: PathBuf::from(s("ca_dir")),
            mesh: MeshConfig {
                trust_domain: s("trust_domain"),
                cluster_domain: s("cluster_domain"),
                default_mode: s("default_mode").parse().unwrap_or(DataplaneMode::Ztunnel),
                root_namespace: s("root_namespace"),
                trust_bundle: Default::default(),
            },
            push_debounce: Duration::from_millis(n("push_debounce_ms")),
            source_debounce: Duration::from_millis(n("source_debounce_ms")),
            max_request_bytes: n("max_request_bytes") as usize,
            connect_timeout: Duration::from_millis(n("connect_timeout_ms")),
            log_format: if s("log_format") == "json" {
                LogFormat::Json
            } else {
                LogFormat::Text
            },
            test_hooks: s("test_hooks") == "true",
        })
    }
}

impl Config {
    /// A config for tests and embedding: loopback ports chosen by the OS, short debounces.
    pub fn for_tests(config_dir: impl Into<PathBuf>, ca_dir: impl Into<PathBuf>) -> Self {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        Config {
            ca_dir: ca_dir.into(),
            xds_address: loopback,
            admin_address: loopback,
            xds_tls_address: loopback,
            cert_default_ttl: Duration::from_secs(24 * 3600),
            cert_max_ttl: Duration::from_secs(24 * 3600),
            kube_api: String::new(),
            config_dir: config_dir.into(),
            mesh: MeshConfig::default(),
            push_debounce: Duration::from_millis(20),
            source_debounce: Duration::from_millis(50),
            max_request_bytes: 4 << 20,
            connect_timeout: Duration::from_secs(1),
            log_format: LogFormat::Text,
            test_hooks: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let c = RawConfig::defaults()
            .file(
                Path::new("c.toml"),
                "config_dir = \"/a\"\npush_debounce_ms = 50\n",
            )
            .env([
                ("SWITCHYARD_PUSH_DEBOUNCE_MS", "70"),
                ("PATH", "/bin"),
                ("SWITCHYARD_UNRELATED_THING", "x"),
            ])
            .cli([("config_dir", "/b".to_string())])
            .build()
            .unwrap();
        assert_eq!(c.config_dir, PathBuf::from("/b"));
        assert_eq!(c.push_debounce, Duration::from_millis(70));
        assert_eq!(c.xds_address.port(), 15010);
        assert_eq!(c.admin_address.port(), 15014);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = RawConfig::defaults()
            .file(
                Path::new("c.toml"),
                "xds_adress = \"x\"\ndefault_mode = \"istio\"\n",
            )
            .env([("SWITCHYARD_ADMIN_ADDRESS", "nope")])
            .build()
            .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"xds_adress"), "{err}");
        assert!(keys.contains(&"default_mode"), "{err}");
        assert!(keys.contains(&"admin_address"), "{err}");
        assert!(keys.contains(&"config_dir"), "{err}");
        let text = err.to_string();
        assert!(text.contains("environment"), "{text}");
        assert!(text.contains("unknown key"), "{text}");
    }

    #[test]
    fn bad_toml_is_a_problem() {
        let err = RawConfig::defaults()
            .file(Path::new("c.toml"), "config_dir = ")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("not valid TOML"), "{err}");
    }
}
