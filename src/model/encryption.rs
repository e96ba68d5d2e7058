//! Client-side encryption with age (README "Encryption"): the recipients a backup is encrypted
//! to, as configured, and what its manifest records. Pure (the `age` crate parses the keys).
//!
//! Only public keys live here: the sidecar that writes backups never needs an identity that can
//! read them.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `method` of an encrypted manifest: every object is an age file.
pub const AGE: &str = "age";

/// Appended to the name of every object an encrypted backup stores: `app.dump.zst.age`.
pub const EXTENSION: &str = ".age";

/// What `manifest.json` says about an encrypted backup: how, and to whom. Public keys and
/// fingerprints only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `age`.
    pub method: String,
    /// Who can decrypt it: an `age1…` public key as configured, an SSH key as its type and
    /// `SHA256:` fingerprint (what `ssh-keygen -l` prints).
    pub recipients: Vec<String>,
}

/// One recipient: an age X25519 public key or an SSH public key.
#[derive(Clone, PartialEq, Eq)]
pub enum Recipient {
    /// `age1…`.
    X25519(String),
    /// `ssh-ed25519 AAAA…` or `ssh-rsa AAAA…`, without the comment.
    Ssh { kind: String, blob: String },
}

impl Recipient {
    /// How manifests and messages name it: the `age1…` key itself (public), or the SSH key's
    /// type and fingerprint.
    pub fn fingerprint(&self) -> String {
        match self {
            Recipient::X25519(k) => k.clone(),
            Recipient::Ssh { kind, blob } => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(blob)
                    .unwrap_or_default();
                let sha = Sha256::digest(&raw);
                format!(
                    "{kind} SHA256:{}",
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha)
                )
            }
        }
    }

    /// The age crate's recipient.
    pub fn to_age(&self) -> Box<dyn age::Recipient + Send + Sync> {
        match self {
            Recipient::X25519(k) => Box::new(
                k.parse::<age::x25519::Recipient>()
                    .expect("validated when parsed"),
            ),
            Recipient::Ssh { kind, blob } => Box::new(
                format!("{kind} {blob}")
                    .parse::<age::ssh::Recipient>()
                    .expect("validated when parsed"),
            ),
        }
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl FromStr for Recipient {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let hint = "expected an age public key (age1…, as `age-keygen -y key.txt` prints) or an SSH public key (ssh-ed25519 … or ssh-rsa …)";
        if s.starts_with("AGE-SECRET-KEY-") {
            // Never echo it: this is the private key.
            return Err(
                "an age identity (AGE-SECRET-KEY-…) was given where a recipient belongs: that is the PRIVATE key, which must not be in the sidecar that writes backups; give its public key instead (`age-keygen -y key.txt`), and treat this key as exposed".to_string(),
            );
        }
        if s.starts_with("age1") {
            return s
                .parse::<age::x25519::Recipient>()
                .map(|_| Recipient::X25519(s.to_string()))
                .map_err(|e| format!("{s:?} is not a valid age public key ({e}): {hint}"));
        }
        if s.starts_with("ssh-") {
            let mut parts = s.split_whitespace();
            let (kind, blob) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            return match format!("{kind} {blob}").parse::<age::ssh::Recipient>() {
                Ok(_) => Ok(Recipient::Ssh {
                    kind: kind.to_string(),
                    blob: blob.to_string(),
                }),
                Err(e) => Err(format!(
                    "{s:?} is not an SSH public key age can encrypt to ({}): {hint}",
                    ssh_error(&e)
                )),
            };
        }
        Err(format!("{s:?} is not an age recipient: {hint}"))
    }
}

fn ssh_error(e: &age::ssh::ParseRecipientKeyError) -> String {
    use age::ssh::ParseRecipientKeyError as E;
    match e {
        E::Ignore => "a key type age does not use".into(),
        E::Invalid(why) => why.to_string(),
        E::RsaModulusTooLarge => "RSA key too large".into(),
        E::RsaModulusTooSmall => "RSA key smaller than 2048 bits".into(),
        E::Unsupported(kind) => format!("unsupported key type {kind}"),
        _ => "not readable".into(),
    }
}

/// A validated, non-empty list of recipients, in the order given, without repeats.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipients(Vec<Recipient>);

impl Recipients {
    /// What a recipients setting looks like, for error messages.
    pub const EXPECTED: &str = "one or more age public keys (age1…) or SSH public keys, separated by commas or new lines (# starts a comment line)";

    /// Parses a list: entries separated by commas or new lines; blank lines and lines starting
    /// with `#` are skipped (the format of `age -R` recipients files).
    pub fn parse(text: &str) -> Result<Recipients, String> {
        let mut out: Vec<Recipient> = Vec::new();
        for entry in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let r: Recipient = entry.parse()?;
            if !out.contains(&r) {
                out.push(r);
            }
        }
        if out.is_empty() {
            return Err(format!("no recipient given: {}", Self::EXPECTED));
        }
        Ok(Recipients(out))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Recipient> {
        self.0.iter()
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.0.iter().map(Recipient::fingerprint).collect()
    }

    /// The manifest's record of a backup encrypted to these recipients.
    pub fn record(&self) -> Encryption {
        Encryption {
            method: AGE.into(),
            recipients: self.fingerprints(),
        }
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

impl Serialize for Recipients {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.fingerprints().serialize(s)
    }
}

/// Identities that can decrypt backups: age X25519 keys (`AGE-SECRET-KEY-1…` lines, as
/// `age-keygen` writes) or one unencrypted SSH private key. Never printed.
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// The public keys of the age identities, for messages.
    public: Vec<String>,
    /// Where they came from, for messages: a file name or a variable.
    pub source: String,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} from {})", self.keys.len(), self.source)
    }
}

impl Identities {
    /// Parses the text of an identity file. Errors name the line, never its content.
    pub fn parse(text: &str, source: &str) -> Result<Identities, String> {
        let trimmed = text.trim_start();
        if trimmed.starts_with("age-encryption.org/") || trimmed.starts_with("-----BEGIN AGE") {
            return Err(format!(
                "{source} is a passphrase-protected identity file, which pgctl does not read: decrypt it for the restore (`age -d key.age > key.txt`, on a disk you trust) and give that file"
            ));
        }
        if trimmed.starts_with("-----BEGIN") {
            return Self::ssh(text, source);
        }
        let mut keys: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        let mut public = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.parse::<age::x25519::Identity>() {
                Ok(id) => {
                    public.push(id.to_public().to_string());
                    keys.push(Box::new(id));
                }
                Err(_) => {
                    let what = if line.starts_with("age1") || line.starts_with("ssh-") {
                        "a public key (a recipient); give the private key, AGE-SECRET-KEY-1…"
                    } else {
                        "not an age identity (AGE-SECRET-KEY-1…, as age-keygen writes)"
                    };
                    return Err(format!("{source}: line {} is {what}", n + 1));
                }
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "{source} holds no identity: expected AGE-SECRET-KEY-1… lines (age-keygen) or an SSH private key"
            ));
        }
        Ok(Identities {
            keys,
            public,
            source: source.to_string(),
        })
    }

    fn ssh(text: &str, source: &str) -> Result<Identities, String> {
        let id = age::ssh::Identity::from_buffer(text.as_bytes(), None)
            .map_err(|e| format!("{source} is not an SSH private key age can use: {e}"))?;
        match id {
            age::ssh::Identity::Unencrypted(_) => Ok(Identities {
                keys: vec![Box::new(id)],
                public: vec![],
                source: source.to_string(),
            }),
            age::ssh::Identity::Encrypted(_) => Err(format!(
                "{source} is a passphrase-protected SSH key, which pgctl does not read: give an age identity, or a copy of the key without passphrase (`ssh-keygen -p`) on a disk you trust"
            )),
            age::ssh::Identity::Unsupported(_) => Err(format!(
                "{source} is an SSH key of a type age cannot decrypt with (ssh-ed25519 and ssh-rsa work)"
            )),
        }
    }

    /// Several sources as one (`--identity A --identity B`).
    pub fn merge(all: Vec<Identities>) -> Option<Identities> {
        let mut it = all.into_iter();
        let mut first = it.next()?;
        for more in it {
            first.keys.extend(more.keys);
            first.public.extend(more.public);
            first.source = format!("{}, {}", first.source, more.source);
        }
        Some(first)
    }

    /// How many keys there are.
    pub fn count(&self) -> usize {
        self.keys.len()
    }

    /// The public keys of these identities, where known (age keys; not SSH keys).
    pub fn public(&self) -> &[String] {
        &self.public
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity)
    }
}

/// The name an object is stored under: `.age` appended when the backup is encrypted. Pure.
pub fn object_name(name: String, encrypted: bool) -> String {
    if encrypted { name + EXTENSION } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN alice@rust";

    fn key() -> String {
        age::x25519::Identity::generate().to_public().to_string()
    }

    #[test]
    fn lists_parse_with_commas_lines_comments_and_repeats() {
        let (a, b) = (key(), key());
        let text = format!("# team keys\n{a}, {b}\n\n{a}\n{ED25519}\n");
        let r = Recipients::parse(&text).unwrap();
        let fps = r.fingerprints();
        assert_eq!(fps.len(), 3, "{fps:?}");
        assert_eq!(fps[0], a);
        assert_eq!(fps[1], b);
        // The fingerprint ssh-keygen -l prints for that key, and never the comment.
        assert!(fps[2].starts_with("ssh-ed25519 SHA256:"), "{}", fps[2]);
        assert!(!fps[2].contains("alice"));
        assert_eq!(
            r.record(),
            Encryption {
                method: "age".into(),
                recipients: fps.clone()
            }
        );
        assert_eq!(serde_json::to_value(&r).unwrap(), serde_json::json!(fps));
        // Every recipient can be used to encrypt.
        let age: Vec<_> = r.iter().map(|x| x.to_age()).collect();
        assert_eq!(age.len(), 3);
    }

    #[test]
    fn bad_recipients_are_named_and_secrets_never_echoed() {
        for (bad, says) in [
            ("", "no recipient given"),
            ("# only a comment", "no recipient given"),
            ("age1notakey", "not a valid age public key"),
            ("ssh-ed25519 AAAA", "not an SSH public key"),
            ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "not an SSH public key"),
            ("gpg:ABCDEF", "not an age recipient"),
        ] {
            let e = Recipients::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let secret = age::x25519::Identity::generate();
        let text = {
            use age::secrecy::ExposeSecret;
            secret.to_string().expose_secret().to_string()
        };
        let e = Recipients::parse(&text).unwrap_err();
        assert!(e.contains("PRIVATE key"), "{e}");
        assert!(!e.contains(&text[15..]), "the secret key was echoed: {e}");
    }

    #[test]
    fn object_names_gain_the_age_extension() {
        assert_eq!(object_name("app.dump.zst".into(), true), "app.dump.zst.age");
        assert_eq!(object_name("app.dump.zst".into(), false), "app.dump.zst");
    }
}
