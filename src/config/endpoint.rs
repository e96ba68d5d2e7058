//! A Postgres server reached by a connection URL (`postgres://user:password@host:port/db?sslmode=…`):
//! a managed database or one on another machine. Pure: parsing, the redacted form shown in
//! status and logs, and the libpq environment client programs get.
//!
//! The password never leaves [`Secret`]: not in [`Endpoint::redacted`], not in errors, not in
//! arguments (client programs get `PGPASSWORD` in their environment).

use std::fmt;

use reqwest::Url;

use super::Secret;

/// The URL parameters passed on to libpq, and the variable each becomes.
const PARAMS: &[(&str, &str)] = &[
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslcrl", "PGSSLCRL"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
];

const SSLMODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// The databases in the URL's path (`/app` or `/app,billing`); empty when it names none.
    pub databases: Vec<String>,
    /// libpq variables from the URL's parameters (`PGSSLMODE=verify-full`…), in URL order.
    pub env: Vec<(&'static str, String)>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

pub const EXPECTED: &str = "postgres://USER[:PASSWORD]@HOST[:PORT][/DATABASE[,DATABASE…]][?sslmode=verify-full&sslrootcert=/path/ca.crt]";

impl Endpoint {
    /// Parses a connection URL. Errors say what is wrong and never repeat the URL (it may hold
    /// a password).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let s = s.trim();
        let u = Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(u.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "the scheme is {:?}: use postgres:// or postgresql://",
                u.scheme()
            ));
        }
        let host = match u.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err("it names no host".into()),
        };
        let user = decode(u.username());
        if user.is_empty() {
            return Err("it names no user (postgres://USER@HOST/…)".into());
        }
        let password = u.password().map(|p| Secret::new(decode(p)));
        let path = decode(u.path().trim_start_matches('/'));
        let databases: Vec<String> = if path.is_empty() {
            vec![]
        } else {
            path.split(',').map(|d| d.trim().to_string()).collect()
        };
        if databases.iter().any(|d| d.is_empty()) {
            return Err("its path has an empty database name".into());
        }
        let mut env = Vec::new();
        for (k, v) in u.query_pairs() {
            let Some((_, var)) = PARAMS.iter().find(|(p, _)| *p == k) else {
                return Err(format!(
                    "parameter {k:?} is not one pgbackup passes on: {}",
                    PARAMS
                        .iter()
                        .map(|(p, _)| *p)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if k == "sslmode" && !SSLMODES.contains(&v.as_ref()) {
                return Err(format!(
                    "sslmode={v:?} is not a libpq sslmode: {}",
                    SSLMODES.join(", ")
                ));
            }
            if env.iter().any(|(e, _)| e == var) {
                return Err(format!("parameter {k:?} is given twice"));
            }
            env.push((*var, v.into_owned()));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port: u.port().unwrap_or(5432),
            user,
            password,
            databases,
            env,
        })
    }

    /// The URL without its password: what status, logs and manifests show.
    pub fn redacted(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut s = format!(
            "postgres://{}@{host}:{}/{}",
            encode(&self.user),
            self.port,
            self.databases
                .iter()
                .map(|d| encode(d))
                .collect::<Vec<_>>()
                .join(",")
        );
        for (i, (var, v)) in self.env.iter().enumerate() {
            let name = PARAMS.iter().find(|(_, e)| e == var).map_or("", |(p, _)| p);
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(&format!("{name}={v}"));
        }
        s
    }

    /// The value of one URL parameter (`sslmode`…), if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        let var = PARAMS.iter().find(|(p, _)| *p == name)?.1;
        self.env
            .iter()
            .find(|(e, _)| *e == var)
            .map(|(_, v)| v.as_str())
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%5F", "_")
        .replace("%2D", "-")
        .replace("%2E", ".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn a_full_url_is_read_and_shown_without_its_password() {
        let e = Endpoint::parse(
            "postgresql://back%40up:s3cr%3At@db.example.com:6432/app,billing?sslmode=verify-full&sslrootcert=/certs/ca.crt",
        )
        .unwrap();
        assert_eq!(e.host, "db.example.com");
        assert_eq!(e.port, 6432);
        assert_eq!(e.user, "back@up");
        assert_eq!(e.password.as_ref().unwrap().expose(), "s3cr:t");
        assert_eq!(e.databases, ["app", "billing"]);
        assert_eq!(
            e.env,
            [
                ("PGSSLMODE", "verify-full".to_string()),
                ("PGSSLROOTCERT", "/certs/ca.crt".to_string())
            ]
        );
        let shown = e.redacted();
        assert_eq!(
            shown,
            "postgres://back%40up@db.example.com:6432/app,billing?sslmode=verify-full&sslrootcert=/certs/ca.crt"
        );
        assert!(!format!("{e:?}").contains("s3cr"));
        assert_eq!(e.param("sslmode"), Some("verify-full"));
    }

    #[test]
    fn defaults_port_and_no_databases() {
        let e = Endpoint::parse("postgres://app@10.0.0.5").unwrap();
        assert_eq!((e.port, e.databases.len(), e.env.len()), (5432, 0, 0));
        assert!(e.password.is_none());
        assert_eq!(e.redacted(), "postgres://app@10.0.0.5:5432/");
        let v6 = Endpoint::parse("postgres://app@[::1]:5433/db").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.redacted(), "postgres://app@[::1]:5433/db");
    }

    #[rstest]
    #[case("mysql://u:pw@h/db", "scheme")]
    #[case("postgres://h/db", "no user")]
    #[case("postgres://u:pw@h/db?sslmode=maybe", "sslmode")]
    #[case("postgres://u:pw@h/db?options=-c%20x", "not one pgbackup passes on")]
    #[case("postgres://u:pw@h/a,,b", "empty database")]
    #[case("not a url pw", "not a URL")]
    fn bad_urls_are_refused_without_repeating_the_password(#[case] url: &str, #[case] why: &str) {
        let e = Endpoint::parse(url).unwrap_err();
        assert!(e.contains(why), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }
}
