//! The SQL a logical restore feeds to psql, rewritten on the fly. Pure.
//!
//! A restore loads every database into a new, temporary database and swaps names at the end
//! (see the `restore` module). The SQL comes from `pg_restore --create -f -` (custom archives) or is
//! the plain dump itself (written with `--create` since this version). Both create the database
//! under its original name, `\connect` to it, and set its owner, ACL, comment and settings by
//! name. [`Rewriter`] points exactly those statements at the temporary name:
//!
//! - inside the TOC entries that belong to the database itself (`Type: DATABASE`,
//!   `DATABASE PROPERTIES`, and `COMMENT`/`ACL`/`SECURITY LABEL` named `DATABASE <name>`), the
//!   token `DATABASE <name>` becomes `DATABASE <temporary>`;
//! - every `\connect` line connects to the temporary database;
//! - a dump without a `CREATE DATABASE` (plain dumps of earlier versions) gets one, with the
//!   session settings of its header replayed after the `\connect`;
//! - what a newer pg_dump writes that an older server rejects is adapted to the server (see
//!   [`ForServer`]): a connect-mode backup, written by the sidecar's newer pg_dump, then loads
//!   into its own major.
//!
//! Table data (`COPY … FROM stdin;` up to `\.`) passes through untouched, whatever it contains.

/// What to rewrite.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The database the SQL was dumped from.
    pub from: String,
    /// The database to create and load instead: plain lower-case ASCII, never needs quoting.
    pub to: String,
    /// The major of the server the SQL is loaded into.
    pub server_major: u32,
    /// Statements to run in the new database as soon as it is connected to, before any of the
    /// dump's own (empty for none).
    pub after_connect: String,
    /// Keep only what creates and describes the database itself (its entries, the `\connect`
    /// and psql's `\restrict` lines, the session settings of the header): the rest of the
    /// archive is loaded by `pg_restore --dbname` (see `restore::direct`).
    pub database_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Before the first TOC entry: the session settings.
    Header,
    /// An entry of the database itself.
    Database,
    Other,
}

/// Splits streamed SQL into lines and tells table data (`COPY … FROM stdin;` up to `\.`) from
/// statements.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
    copy: bool,
}

type LineFn<'a> = dyn FnMut(&[u8], bool) -> Result<(), String> + 'a;

impl Lines {
    /// Calls `f(line, is_data)` for every complete line (with its newline) of `input`.
    fn feed(&mut self, input: &[u8], f: &mut LineFn<'_>) -> Result<(), String> {
        let mut rest = input;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl + 1);
            rest = tail;
            if self.partial.is_empty() {
                self.one(line, f)?;
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.one(&whole, f)?;
            }
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// The last line, if it has no newline; an error if the input ended inside table data.
    fn finish(&mut self, f: &mut LineFn<'_>) -> Result<(), String> {
        if !self.partial.is_empty() {
            let mut last = std::mem::take(&mut self.partial);
            last.push(b'\n');
            self.one(&last, f)?;
        }
        if self.copy {
            return Err("the SQL ended inside table data (COPY without its \\.)".into());
        }
        Ok(())
    }

    fn one(&mut self, line: &[u8], f: &mut LineFn<'_>) -> Result<(), String> {
        if self.copy {
            if line == b"\\.\n" || line == b"\\.\r\n" {
                self.copy = false;
            }
            return f(line, true);
        }
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if trimmed.starts_with(b"COPY ") && trimmed.ends_with(b"FROM stdin;") {
            self.copy = true;
        }
        f(line, false)
    }
}

const TRANSACTION_TIMEOUT: &str = "SET transaction_timeout = 0;";
const LIBC_PROVIDER: &str = " LOCALE_PROVIDER = libc";

/// What pg_dump of a newer major writes even for an older server, which that server rejects,
/// adapted to a server of this major. pg_dump's output is only promised to load into its own
/// major or newer; a connect-mode backup of an older server (the sidecar's pg_dump 18) must load
/// into that server too. Statements only: table data never passes through here.
///
/// - `SET transaction_timeout = 0;` (pg_dump 17+): dropped before 17;
/// - ` LOCALE_PROVIDER = libc` in `CREATE DATABASE` (pg_dump 15+): dropped before 15, where
///   libc is the only provider and the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForServer(pub u32);

impl ForServer {
    /// `line` (a statement line, with its newline) as the server accepts it; `None`: drop it.
    fn adapt<'a>(&self, line: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
        let trimmed = line.trim_ascii_end();
        if self.0 < 17 && trimmed == TRANSACTION_TIMEOUT.as_bytes() {
            return None;
        }
        if self.0 < 15 && trimmed.starts_with(b"CREATE DATABASE ") {
            let text = String::from_utf8_lossy(line);
            if text.contains(LIBC_PROVIDER) {
                return Some(text.replacen(LIBC_PROVIDER, "", 1).into_bytes().into());
            }
        }
        Some(line.into())
    }
}

/// [`ForServer`] over streamed SQL (plain dumps at backup time: see `job::backup::dump`).
#[derive(Debug)]
pub struct ForServerFilter {
    server: ForServer,
    lines: Lines,
}

impl ForServerFilter {
    pub fn new(server_major: u32) -> ForServerFilter {
        ForServerFilter {
            server: ForServer(server_major),
            lines: Lines::default(),
        }
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let server = self.server;
        self.lines
            .feed(input, &mut |line, data| adapt_into(server, line, data, out))
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let server = self.server;
        self.lines
            .finish(&mut |line, data| adapt_into(server, line, data, out))
    }
}

fn adapt_into(server: ForServer, line: &[u8], data: bool, out: &mut Vec<u8>) -> Result<(), String> {
    if data {
        out.extend_from_slice(line);
    } else if let Some(line) = server.adapt(line) {
        out.extend_from_slice(&line);
    }
    Ok(())
}

/// A streaming, line-based rewriter. Feed it chunks in order; it returns whole lines.
#[derive(Debug)]
pub struct Rewriter {
    rw: Rewrite,
    names: Vec<String>,
    lines: Lines,
    entry: Entry,
    connected: bool,
    created: bool,
    header: Vec<u8>,
    /// The key of psql's `\restrict` mode while it is on (pg_dump 17.6, 16.10, 15.14 …): no
    /// meta-command but `\unrestrict KEY` runs then, so an added `\connect` needs it first.
    restricted: Option<String>,
    /// The key the header turns restricted mode on with (replayed with the header).
    header_key: Option<String>,
    /// [`Rewrite::after_connect`] was written.
    prepared: bool,
}

impl Rewriter {
    pub fn new(rw: Rewrite) -> Rewriter {
        let names = spellings(&rw.from);
        Rewriter {
            rw,
            names,
            lines: Lines::default(),
            entry: Entry::Header,
            connected: false,
            created: false,
            header: Vec::new(),
            restricted: None,
            header_key: None,
            prepared: false,
        }
    }

    /// Appends the rewritten form of every complete line in `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut lines = std::mem::take(&mut self.lines);
        let r = lines.feed(input, &mut |line, data| self.line(line, data, out));
        self.lines = lines;
        r
    }

    /// Ends the input: the last line (without a newline) and, for a dump that never created
    /// its database (an empty one), the database.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let mut lines = std::mem::take(&mut self.lines);
        let r = lines.finish(&mut |line, data| self.line(line, data, out));
        self.lines = lines;
        r?;
        if !self.connected {
            self.create_and_connect(out);
        }
        // Whatever follows (the loader's own `\echo`) must be allowed to run.
        if let Some(key) = self.restricted.take() {
            out.extend_from_slice(format!("\\unrestrict {key}\n").as_bytes());
        }
        Ok(())
    }

    fn create_and_connect(&mut self, out: &mut Vec<u8>) {
        if !self.created {
            out.extend_from_slice(
                format!(
                    "CREATE DATABASE {} WITH TEMPLATE = template0;\n",
                    self.rw.to
                )
                .as_bytes(),
            );
            self.created = true;
        }
        if let Some(key) = &self.restricted {
            out.extend_from_slice(format!("\\unrestrict {key}\n").as_bytes());
        }
        out.extend_from_slice(format!("\\connect {}\n", self.rw.to).as_bytes());
        // psql starts a new session: the dump's settings (search_path, client_encoding, …)
        // must hold in it too.
        out.extend_from_slice(&self.header);
        self.restricted = self.header_key.clone();
        self.connected = true;
        self.prepare(out);
    }

    /// [`Rewrite::after_connect`], once, right after the connection to the new database.
    fn prepare(&mut self, out: &mut Vec<u8>) {
        if !self.prepared {
            out.extend_from_slice(self.rw.after_connect.as_bytes());
            self.prepared = true;
        }
    }

    fn line(&mut self, line: &[u8], data: bool, out: &mut Vec<u8>) -> Result<(), String> {
        if data {
            if !self.rw.database_only {
                out.extend_from_slice(line);
            }
            return Ok(());
        }
        let text = String::from_utf8_lossy(line);
        let trimmed = text.trim_end_matches(['\n', '\r']);
        if let Some(entry) = toc_entry(trimmed) {
            if entry != Entry::Database && !self.connected {
                // A dump without --create: its objects go into the database created here.
                self.create_and_connect(out);
            }
            self.entry = entry;
            if !(self.rw.database_only && entry == Entry::Other) {
                out.extend_from_slice(line);
            }
            return Ok(());
        }
        if trimmed.starts_with("\\connect ") || trimmed == "\\connect" {
            if !self.created {
                return Err(format!(
                    "the SQL connects to a database before creating it ({trimmed:?}); nothing was restored"
                ));
            }
            out.extend_from_slice(format!("\\connect {}\n", self.rw.to).as_bytes());
            self.connected = true;
            self.prepare(out);
            return Ok(());
        }
        if let Some(key) = trimmed.strip_prefix("\\restrict ") {
            self.restricted = Some(key.trim().to_string());
            if self.entry == Entry::Header {
                self.header_key = self.restricted.clone();
            }
        } else if trimmed.starts_with("\\unrestrict") {
            self.restricted = None;
        }
        let meta = trimmed.starts_with('\\');
        if self.rw.database_only && self.entry == Entry::Other && !meta {
            return Ok(());
        }
        let Some(line) = ForServer(self.rw.server_major).adapt(line) else {
            return Ok(());
        };
        let line = line.as_ref();
        let text = String::from_utf8_lossy(line);
        if self.entry == Entry::Header {
            self.header.extend_from_slice(line);
        }
        if self.entry == Entry::Database {
            let (rewritten, hits) = self.rename(&text);
            if trimmed.starts_with("CREATE DATABASE ") {
                if hits == 0 {
                    return Err(format!(
                        "cannot point {trimmed:?} at a temporary database: the name does not match {:?}; nothing was restored",
                        self.rw.from
                    ));
                }
                self.created = true;
            }
            out.extend_from_slice(rewritten.as_bytes());
            return Ok(());
        }
        out.extend_from_slice(line);
        Ok(())
    }

    /// `DATABASE <name>` → `DATABASE <temporary>`, for every spelling of the name.
    fn rename(&self, text: &str) -> (String, usize) {
        let mut s = text.to_string();
        let mut hits = 0;
        for name in &self.names {
            let needle = format!("DATABASE {name}");
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(at) = rest.find(&needle) {
                let after = &rest[at + needle.len()..];
                let ends = after
                    .chars()
                    .next()
                    .is_none_or(|c| c == ' ' || c == ';' || c == '\n' || c == '\r');
                out.push_str(&rest[..at]);
                if ends {
                    out.push_str("DATABASE ");
                    out.push_str(&self.rw.to);
                    hits += 1;
                } else {
                    out.push_str(&needle);
                }
                rest = after;
            }
            out.push_str(rest);
            s = out;
        }
        (s, hits)
    }
}

/// The kind of TOC entry a pg_dump comment header starts, if the line is one:
/// `-- Name: shop; Type: DATABASE; Schema: -; Owner: app` or `-- Data for Name: …`.
fn toc_entry(line: &str) -> Option<Entry> {
    let rest = line
        .strip_prefix("-- Name: ")
        .or_else(|| line.strip_prefix("-- Data for Name: "))?;
    let (name, after) = rest.rsplit_once("; Type: ")?;
    let kind = after.split("; ").next().unwrap_or("");
    let own = match kind {
        "DATABASE" | "DATABASE PROPERTIES" => true,
        "COMMENT" | "ACL" | "SECURITY LABEL" => name.starts_with("DATABASE "),
        _ => false,
    };
    Some(if own { Entry::Database } else { Entry::Other })
}

/// How pg_dump may write a database name: always double-quoted when it needs it, and bare when
/// it is a plain lower-case identifier (pg_dump also quotes keywords, so both are tried).
fn spellings(name: &str) -> Vec<String> {
    let mut v = vec![quote_ident(name)];
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        v.push(name.to_string());
    }
    v
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal for SQL.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rw: Rewrite, input: &str, chunk: usize) -> Result<String, String> {
        let mut r = Rewriter::new(rw);
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(chunk) {
            r.feed(c, &mut out)?;
        }
        r.finish(&mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn rw(from: &str, server_major: u32) -> Rewrite {
        Rewrite {
            from: from.into(),
            to: "pgbackup_restore_ab12_1".into(),
            server_major,
            after_connect: String::new(),
            database_only: false,
        }
    }

    /// The shape of `pg_restore --create -f -` (and of `pg_dump --create` plain output).
    const CREATED: &str = "--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET transaction_timeout = 0;
SET client_encoding = 'UTF8';

--
-- Name: shop; Type: DATABASE; Schema: -; Owner: app_owner
--

CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8';


ALTER DATABASE shop OWNER TO app_owner;

\\connect shop

SET statement_timeout = 0;
SET transaction_timeout = 0;

--
-- Name: DATABASE shop; Type: COMMENT; Schema: -; Owner: app_owner
--

COMMENT ON DATABASE shop IS 'The shop';


--
-- Name: shop; Type: DATABASE PROPERTIES; Schema: -; Owner: app_owner
--

ALTER DATABASE shop SET work_mem TO '8MB';
ALTER ROLE alice IN DATABASE shop SET work_mem TO '16MB';


--
-- Name: notes; Type: TABLE; Schema: app; Owner: app_owner
--

CREATE TABLE app.notes (body text);
COMMENT ON TABLE app.notes IS 'ALTER DATABASE shop SET x';

--
-- Data for Name: notes; Type: TABLE DATA; Schema: app; Owner: app_owner
--

COPY app.notes (body) FROM stdin;
SET transaction_timeout = 0;
ALTER DATABASE shop SET work_mem TO '1MB';
\\\\connect shop
\\.


--
-- Name: DATABASE shop; Type: ACL; Schema: -; Owner: app_owner
--

REVOKE CONNECT,TEMPORARY ON DATABASE shop FROM PUBLIC;
GRANT CONNECT ON DATABASE shop TO reader;
";

    /// The first step of a direct load: what creates and describes the database, pointed at
    /// the temporary name; no object of the database and no table data.
    #[test]
    fn database_only_keeps_the_database_and_nothing_inside_it() {
        let only = |chunk| {
            let mut r = rw("shop", 17);
            r.database_only = true;
            r.after_connect = "GRANT CREATE ON SCHEMA public TO PUBLIC;\n".into();
            run(r, CREATED, chunk).unwrap()
        };
        let out = only(1 << 20);
        for chunk in [1, 3, 64] {
            assert_eq!(only(chunk), out);
        }
        let t = "pgbackup_restore_ab12_1";
        for line in [
            "SET client_encoding = 'UTF8';\n".to_string(),
            format!("CREATE DATABASE {t} WITH TEMPLATE = template0 ENCODING = 'UTF8'"),
            format!("ALTER DATABASE {t} OWNER TO app_owner;"),
            format!("\\connect {t}\nGRANT CREATE ON SCHEMA public TO PUBLIC;\n"),
            format!("COMMENT ON DATABASE {t} IS 'The shop';"),
            format!("ALTER DATABASE {t} SET work_mem TO '8MB';"),
            format!("ALTER ROLE alice IN DATABASE {t} SET work_mem"),
            "-- Name: DATABASE shop; Type: ACL;".to_string(),
            format!("REVOKE CONNECT,TEMPORARY ON DATABASE {t} FROM PUBLIC;"),
            format!("GRANT CONNECT ON DATABASE {t} TO reader;"),
        ] {
            assert!(out.contains(&line), "{line:?} missing in\n{out}");
        }
        for gone in [
            "app.notes",
            "Type: TABLE",
            "COPY",
            "\\.",
            "'1MB'",
            "\\\\connect",
        ] {
            assert!(!out.contains(gone), "{gone:?} left in\n{out}");
        }
        // psql's restricted mode is kept whole: the key's lines pass whatever the entry.
        let body = CREATED.replace(
            "\n\\connect shop\n",
            "\n\\unrestrict K3y\n\\connect shop\n\\restrict K3y\n",
        );
        let restricted = format!("\\restrict K3y\n{body}\\unrestrict K3y\n");
        let mut r = rw("shop", 17);
        r.database_only = true;
        let out = run(r, &restricted, 5).unwrap();
        assert!(out.starts_with("\\restrict K3y\n"), "{out}");
        assert!(
            out.contains(&format!(
                "\\unrestrict K3y\n\\connect {t}\n\\restrict K3y\n"
            )),
            "{out}"
        );
        assert!(
            out.ends_with("ON DATABASE pgbackup_restore_ab12_1 TO reader;\n\\unrestrict K3y\n"),
            "{out}"
        );
    }

    #[test]
    fn database_statements_point_at_the_temporary_name_whatever_the_chunking() {
        let expected = run(rw("shop", 17), CREATED, 1 << 20).unwrap();
        for chunk in [1, 2, 7, 64] {
            assert_eq!(run(rw("shop", 17), CREATED, chunk).unwrap(), expected);
        }
        let t = "pgbackup_restore_ab12_1";
        for line in [
            format!("CREATE DATABASE {t} WITH TEMPLATE = template0 ENCODING = 'UTF8'"),
            format!("ALTER DATABASE {t} OWNER TO app_owner;"),
            format!("\\connect {t}\n"),
            format!("COMMENT ON DATABASE {t} IS 'The shop';"),
            format!("ALTER DATABASE {t} SET work_mem TO '8MB';"),
            format!("ALTER ROLE alice IN DATABASE {t} SET work_mem"),
            format!("REVOKE CONNECT,TEMPORARY ON DATABASE {t} FROM PUBLIC;"),
            format!("GRANT CONNECT ON DATABASE {t} TO reader;"),
        ] {
            assert!(expected.contains(&line), "{line:?} missing in\n{expected}");
        }
        // Objects and table data are not database statements: untouched.
        assert!(expected.contains("COMMENT ON TABLE app.notes IS 'ALTER DATABASE shop SET x';"));
        assert!(expected.contains(
            "FROM stdin;\nSET transaction_timeout = 0;\nALTER DATABASE shop SET work_mem TO '1MB';\n\\\\connect shop\n\\.\n"
        ));
        assert!(!expected.contains("\\connect shop\n\nSET"), "{expected}");
        assert_eq!(expected.matches("SET transaction_timeout = 0;").count(), 3);
    }

    #[test]
    fn newer_pg_dump_statements_are_adapted_to_older_servers_outside_table_data() {
        // 16: transaction_timeout goes, the locale provider stays.
        let out = run(rw("shop", 16), CREATED, 5).unwrap();
        assert_eq!(out.matches("SET transaction_timeout = 0;").count(), 1);
        assert!(out.contains("FROM stdin;\nSET transaction_timeout = 0;\n"));
        assert!(
            out.contains("ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE"),
            "{out}"
        );
        // 13: no locale providers before 15 (libc was the only one).
        let out = run(rw("shop", 13), CREATED, 5).unwrap();
        assert!(
            out.contains("CREATE DATABASE pgbackup_restore_ab12_1 WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE = 'C.UTF-8';\n"),
            "{out}"
        );
        assert!(!out.contains("LOCALE_PROVIDER"), "{out}");
        assert_eq!(out.matches("SET transaction_timeout = 0;").count(), 1);
        // 17 and later: as written.
        assert_eq!(
            run(rw("shop", 17), CREATED, 5).unwrap(),
            run(rw("shop", 18), CREATED, 5).unwrap()
        );
        assert!(
            run(rw("shop", 17), CREATED, 5)
                .unwrap()
                .contains("LOCALE_PROVIDER = libc")
        );
    }

    #[test]
    fn after_connect_runs_once_right_after_the_connection_to_the_new_database() {
        let prepare = "ALTER SCHEMA public OWNER TO postgres;\n";
        let with = |input: &str| {
            let mut rw = rw("shop", 17);
            rw.after_connect = prepare.into();
            run(rw, input, 3).unwrap()
        };
        let out = with(CREATED);
        assert_eq!(out.matches(prepare).count(), 1, "{out}");
        assert!(
            out.contains(&format!("\\connect pgbackup_restore_ab12_1\n{prepare}")),
            "{out}"
        );
        // A dump without CREATE DATABASE: after the connection the rewriter adds.
        let bare = "SET statement_timeout = 0;\n\n--\n-- Name: notes; Type: TABLE; Schema: app; Owner: a\n--\n\nCREATE TABLE app.notes (body text);\n";
        let out = with(bare);
        assert_eq!(out.matches(prepare).count(), 1, "{out}");
        let at = |s: &str| out.find(s).unwrap();
        assert!(
            at("\\connect pgbackup_restore_ab12_1") < at(prepare),
            "{out}"
        );
        assert!(at(prepare) < at("CREATE TABLE app.notes"), "{out}");
    }

    #[test]
    fn the_backup_filter_adapts_statements_outside_table_data_only() {
        for chunk in [1, 3, 1000] {
            let mut f = ForServerFilter::new(16);
            let mut out = Vec::new();
            for c in CREATED.as_bytes().chunks(chunk) {
                f.feed(c, &mut out).unwrap();
            }
            f.finish(&mut out).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out, CREATED.replace("SET transaction_timeout = 0;\nSET client", "SET client").replace("SET statement_timeout = 0;\nSET transaction_timeout = 0;\n\n--\n-- Name: DATABASE", "SET statement_timeout = 0;\n\n--\n-- Name: DATABASE"));
            assert!(out.contains("FROM stdin;\nSET transaction_timeout = 0;\n"));
        }
    }

    #[test]
    fn names_that_need_quoting_and_keywords() {
        let odd = "Reporting \"Q4\" / données ✓";
        let q = quote_ident(odd);
        let sql = format!(
            "--\n-- Name: {odd}; Type: DATABASE; Schema: -; Owner: a\n--\n\nCREATE DATABASE {q} WITH TEMPLATE = template0;\nALTER DATABASE {q} OWNER TO a;\n\\connect -reuse-previous=on \"dbname='x'\"\n--\n-- Name: DATABASE {odd}; Type: COMMENT; Schema: -; Owner: a\n--\nCOMMENT ON DATABASE {q} IS 'c';\n"
        );
        let out = run(rw(odd, 17), &sql, 3).unwrap();
        assert!(!out.contains(&q), "{out}");
        assert_eq!(out.matches("DATABASE pgbackup_restore_ab12_1").count(), 3);
        // A keyword is quoted by pg_dump even though it is lower case.
        let sql = "-- Name: user; Type: DATABASE; Schema: -; Owner: a\nCREATE DATABASE \"user\" WITH TEMPLATE = template0;\n\\connect \"user\"\n";
        let out = run(rw("user", 17), sql, 4).unwrap();
        assert!(out.contains("CREATE DATABASE pgbackup_restore_ab12_1 WITH"));
        // A longer name that merely starts with the same letters is not renamed.
        let sql = "-- Name: shop; Type: DATABASE PROPERTIES; Schema: -; Owner: a\nALTER ROLE x IN DATABASE shop_old SET a TO 'b';\n";
        let out = run(rw("shop", 17), sql, 4).unwrap();
        assert!(out.contains("IN DATABASE shop_old SET"), "{out}");
    }

    #[test]
    fn a_dump_without_create_gets_one_with_its_settings_replayed() {
        let sql = "SET client_encoding = 'UTF8';\nSELECT pg_catalog.set_config('search_path', '', false);\n\n--\n-- Name: t; Type: TABLE; Schema: public; Owner: a\n--\nCREATE TABLE public.t (x int);\n";
        let out = run(rw("app", 17), sql, 3).unwrap();
        let create = out.find("CREATE DATABASE pgbackup_restore_ab12_1").unwrap();
        let connect = out.find("\\connect pgbackup_restore_ab12_1\n").unwrap();
        let table = out.find("CREATE TABLE public.t").unwrap();
        assert!(create < connect && connect < table, "{out}");
        assert_eq!(out.matches("SET client_encoding = 'UTF8';").count(), 2);
        // An empty dump still creates the database.
        let out = run(rw("app", 17), "SET x = 1;\n", 1).unwrap();
        assert!(
            out.ends_with("\\connect pgbackup_restore_ab12_1\nSET x = 1;\n"),
            "{out}"
        );
        // psql's restricted mode (pg_dump 17.6+) is lifted for the added \connect and restored
        // by the replayed header.
        let sql = "\\restrict K3y\nSET x = 1;\n-- Name: t; Type: TABLE; Schema: public; Owner: a\nCREATE TABLE t (x int);\n\\unrestrict K3y\n";
        let out = run(rw("app", 17), sql, 2).unwrap();
        assert!(out.contains("\\unrestrict K3y\n\\connect pgbackup_restore_ab12_1\n\\restrict K3y\nSET x = 1;\n-- Name: t"), "{out}");
        assert!(out.ends_with("\\unrestrict K3y\n"), "{out}");
        let out = run(rw("app", 17), "\\restrict K3y\nSET x = 1;\n", 2).unwrap();
        assert!(
            out.ends_with("\\restrict K3y\nSET x = 1;\n\\unrestrict K3y\n"),
            "{out}"
        );
    }

    #[test]
    fn refuses_what_it_cannot_point_at_the_temporary_database() {
        let sql = "-- Name: shop; Type: DATABASE; Schema: -; Owner: a\nCREATE DATABASE other WITH TEMPLATE = template0;\n";
        let e = run(rw("shop", 17), sql, 8).unwrap_err();
        assert!(e.contains("nothing was restored"), "{e}");
        let e = run(rw("shop", 17), "\\connect shop\n", 8).unwrap_err();
        assert!(e.contains("before creating it"), "{e}");
        let e = run(rw("shop", 17), "-- Name: t; Type: TABLE DATA; Schema: public; Owner: a\nCOPY public.t (x) FROM stdin;\n1\n", 8).unwrap_err();
        assert!(e.contains("inside table data"), "{e}");
    }
}
