//! The deployment files under `deploy/`: the official tools validate them, `promtool`
//! unit-tests the alerts, and every metric the alerts and the Grafana dashboard query is checked
//! against a live scrape of `GET /metrics` after real traffic.
//!
//! The tools come from Debian packages that `scripts/test.sh` installs: `promtool`
//! (`prometheus`), `amtool` (`prometheus-alertmanager`) and `docker-compose`
//! (`docker-compose`). A missing tool fails its test; none is ever skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::Api;
use crate::common::{Gate, Redis, repo_root, settings};
use crate::instances::{Tenant, redis_cmd};

fn deploy_path(rel: &str) -> PathBuf {
    repo_root().join("deploy").join(rel)
}

fn read(rel: &str) -> String {
    let p = deploy_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `bin` (from the Debian package `package`), run in the repository root. Fails the test when
/// the tool is not installed: these checks are never skipped.
fn tool(bin: &str, package: &str) -> Command {
    match Command::new(bin).arg("--version").output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{bin}` is not installed; scripts/test.sh installs it \
             (Debian package `{package}`: apt-get install {package})"
        ),
        Err(e) => panic!("cannot run `{bin}`: {e}"),
    }
    let mut c = Command::new(bin);
    c.current_dir(repo_root());
    c
}

fn promtool() -> Command {
    tool("promtool", "prometheus")
}

/// Runs `cmd`, returns (success, stdout + stderr).
fn run(mut cmd: Command) -> (bool, String) {
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{what} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_ok(cmd: Command) -> String {
    let (ok, text) = run(cmd);
    assert!(ok, "{text}");
    text
}

// ------------------------------------------------------------------ Prometheus

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let mut c = promtool();
    c.args(["check", "config", "deploy/prometheus/prometheus.yml"]);
    let out = run_ok(c);
    assert!(out.contains("1 rule files found"), "prometheus.yml must load alerts.yml: {out}");
    let mut c = promtool();
    c.args(["check", "rules", "deploy/prometheus/alerts.yml"]);
    run_ok(c);
    let mut c = promtool();
    c.args(["test", "rules", "deploy/prometheus/alerts.test.yml"]);
    run_ok(c);
}

#[test]
fn prometheus_scrapes_redisgate_and_alerts_alertmanager() {
    let cfg = read("prometheus/prometheus.yml");
    for want in ["job_name: redisgate", "redisgate:8080", "alertmanager:9093", "- alerts.yml"] {
        assert!(cfg.contains(want), "prometheus.yml lacks `{want}`");
    }
}

/// One alerting rule as written in alerts.yml.
#[derive(Debug, Default)]
struct AlertRule {
    name: String,
    text: String,
}

/// The `- alert:` blocks of a rules file (each up to the next rule or group).
fn alert_rules(yaml: &str) -> Vec<AlertRule> {
    let mut rules: Vec<AlertRule> = Vec::new();
    let mut current: Option<AlertRule> = None;
    for line in yaml.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            rules.extend(current.take());
            current = Some(AlertRule { name: name.trim().to_owned(), text: String::new() });
        } else if t.starts_with("- record:") || t.starts_with("- name:") {
            rules.extend(current.take());
        }
        if let Some(r) = current.as_mut() {
            r.text.push_str(line);
            r.text.push('\n');
        }
    }
    rules.extend(current);
    rules
}

#[test]
fn every_alert_has_for_severity_annotations_and_a_unit_test() {
    let rules = alert_rules(&read("prometheus/alerts.yml"));
    assert!(rules.len() >= 15, "only {} alert rules", rules.len());
    let tests = read("prometheus/alerts.test.yml");
    let mut seen = BTreeSet::new();
    for r in &rules {
        assert!(seen.insert(r.name.clone()), "alert {} defined twice", r.name);
        for key in ["expr:", "for:", "summary:", "description:"] {
            assert!(r.text.contains(key), "alert {} has no `{key}`:\n{}", r.name, r.text);
        }
        assert!(
            r.text.contains("severity: critical") || r.text.contains("severity: warning"),
            "alert {} needs severity critical or warning",
            r.name
        );
        assert!(
            tests.contains(&format!("alertname: {}\n", r.name)),
            "alert {} has no test in alerts.test.yml",
            r.name
        );
    }
}

// ------------------------------------------------------------------ Alertmanager

#[test]
fn alertmanager_config_passes_amtool_and_routes_critical_alerts() {
    let mut c = tool("amtool", "prometheus-alertmanager");
    c.args(["check-config", "deploy/alertmanager/alertmanager.yml"]);
    run_ok(c);
    for (labels, receiver) in [
        (["severity=critical", "alertname=RedisGateDown"], "oncall-webhook"),
        (["severity=warning", "alertname=RedisGateHighCpu"], "default"),
    ] {
        let mut c = tool("amtool", "prometheus-alertmanager");
        c.args(["config", "routes", "test", "--config.file=deploy/alertmanager/alertmanager.yml"])
            .args(labels);
        let out = run_ok(c);
        assert!(out.contains(&format!("stdout\n{receiver}\n")), "{labels:?} should go to {receiver}: {out}");
    }
}

// ------------------------------------------------------------------ docker-compose

const COMPOSE_SECRETS: [&str; 3] = ["REDISGATE_SECRET_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"];

fn compose(env_file: &std::path::Path) -> Command {
    let mut c = tool("docker-compose", "docker-compose");
    c.arg("--env-file").arg(env_file).args(["-f", "deploy/docker-compose.yml", "config", "-q"]);
    for v in COMPOSE_SECRETS {
        c.env_remove(v);
    }
    c
}

#[test]
fn compose_file_is_valid_and_has_no_default_secrets() {
    // An empty env file: a developer's deploy/.env must not make this pass or fail.
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("empty.env");
    std::fs::write(&env_file, "").unwrap();
    let mut c = compose(&env_file);
    c.env("REDISGATE_SECRET_KEY", "0123456789abcdef".repeat(4))
        .env("POSTGRES_PASSWORD", "compose-check")
        .env("GRAFANA_ADMIN_PASSWORD", "compose-check");
    run_ok(c);
    // Each secret is required: leaving one out is an error naming it.
    for missing in COMPOSE_SECRETS {
        let mut c = compose(&env_file);
        for v in COMPOSE_SECRETS.iter().filter(|v| **v != missing) {
            c.env(v, "compose-check");
        }
        let (ok, out) = run(c);
        assert!(!ok && out.contains(missing), "compose must refuse to start without {missing}: {out}");
    }
}

// ------------------------------------------------------------------ the image

/// The Dockerfile cannot be built here (no Docker engine); this keeps its dependency layer in
/// step with the workspace (a crate whose manifest is not copied breaks `cargo build --locked`)
/// and its runtime contract in place.
#[test]
fn dockerfile_copies_every_crate_manifest() {
    let root = repo_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for e in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = e.unwrap().path();
        if dir.join("Cargo.toml").exists() {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let line = format!("COPY crates/{name}/Cargo.toml crates/{name}/");
            assert!(dockerfile.contains(&line), "the Dockerfile's dependency layer needs `{line}`");
        }
    }
    for want in [
        "cargo build --release --locked -p redisgate",
        "redis-server",
        "USER redisgate",
        "VOLUME [\"/data\"]",
        "REDISGATE_DATA_DIR=/data",
        "REDISGATE_LISTEN=0.0.0.0:8080",
        "EXPOSE 8080",
        "/health/live",
        "ENTRYPOINT [\"redisgate\"]",
        "CMD [\"serve\"]",
    ] {
        assert!(dockerfile.contains(want), "the Dockerfile lacks `{want}`");
    }
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "**/target"), ".dockerignore must keep target/ out");
}

// ------------------------------------------------------------------ Grafana

/// Every panel (rows' nested panels included) of a dashboard.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = deploy_path("grafana/dashboards");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    assert!(!out.is_empty(), "no dashboard in {}", dir.display());
    out
}

/// Every PromQL query of a dashboard: (where, query). Template variables' `label_values(m, l)`
/// give their metric selector.
fn dashboard_queries(name: &str, d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                let title = p["title"].as_str().unwrap_or_default();
                out.push((format!("{name} panel {} \"{title}\" {}", p["id"], t["refId"]), e.to_owned()));
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
            if let Some(expr) = grafana_variable_promql(q) {
                out.push((format!("{name} variable {}", v["name"]), expr));
            }
        }
    }
    out
}

/// The PromQL inside a Grafana Prometheus variable query, if it has any.
fn grafana_variable_promql(q: &str) -> Option<String> {
    let q = q.trim();
    if let Some(inner) = q.strip_prefix("query_result(").and_then(|r| r.strip_suffix(')')) {
        return Some(inner.to_owned());
    }
    let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
    // label_values(selector, label) or label_values(label): split at the last top-level comma.
    let (mut depth, mut quote, mut split) = (0i32, None::<char>, None);
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (Some(_), '\\') => {}
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '{' | '[') => depth += 1,
            (None, ')' | '}' | ']') => depth -= 1,
            (None, ',') if depth == 0 => split = Some(i),
            _ => {}
        }
    }
    split.map(|i| inner[..i].to_owned())
}

/// Replaces Grafana's variables by values PromQL accepts.
fn substitute_grafana_variables(expr: &str) -> String {
    let mut s = expr.to_owned();
    for (var, value) in [
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("${instance}", ".*"),
        ("$instance", ".*"),
    ] {
        s = s.replace(var, value);
    }
    assert!(!s.contains('$'), "unknown Grafana variable in {expr}");
    s
}

#[test]
fn dashboard_is_complete_and_provisioned() {
    let datasources = read("grafana/provisioning/datasources/prometheus.yml");
    assert!(datasources.contains("uid: prometheus") && datasources.contains("url: http://prometheus:9090"));
    let providers = read("grafana/provisioning/dashboards/redisgate.yml");
    assert!(providers.contains("path: /var/lib/grafana/dashboards"));
    let compose = read("docker-compose.yml");
    assert!(compose.contains("./grafana/dashboards:/var/lib/grafana/dashboards"));
    assert!(compose.contains("./grafana/provisioning:/etc/grafana/provisioning"));

    for (name, d) in dashboards() {
        assert!(d["uid"].is_string() && d["title"].is_string(), "{name}: uid and title");
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let ds = vars.iter().find(|v| v["type"] == "datasource").expect("a datasource variable");
        assert_eq!(ds["query"], "prometheus", "{name}");
        assert_eq!(ds["current"]["value"], "prometheus", "{name}: defaults to the provisioned uid");
        let ds_ref = json!({"type": "prometheus", "uid": format!("${{{}}}", ds["name"].as_str().unwrap())});

        let mut ids = BTreeSet::new();
        let mut with_queries = 0;
        for p in panels(&d) {
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{name}: duplicate panel id {}",
                p["id"]
            );
            assert!(p["gridPos"]["w"].as_u64().is_some(), "{name}: panel {} has no gridPos", p["id"]);
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"], ds_ref, "{name}: panel {} must use the datasource variable", p["id"]);
            let targets =
                p["targets"].as_array().unwrap_or_else(|| panic!("{name}: panel {} has no targets", p["id"]));
            assert!(!targets.is_empty(), "{name}: panel {} has no targets", p["id"]);
            for t in targets {
                assert_eq!(t["datasource"], ds_ref, "{name}: panel {} target", p["id"]);
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{name}: panel {}",
                    p["id"]
                );
            }
            with_queries += 1;
        }
        assert!(with_queries >= 14, "{name}: only {with_queries} panels with queries");
    }
}

/// Every dashboard query parses as PromQL: promtool checks them as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, d)) in dashboards().iter().enumerate() {
        for (j, (where_, q)) in dashboard_queries("", d).into_iter().enumerate() {
            let expr = serde_json::to_string(&substitute_grafana_variables(&q)).unwrap();
            yaml.push_str(&format!("      # {}\n", where_.replace('\n', " ")));
            yaml.push_str(&format!("      - record: dashboard:query_{i}_{j}\n        expr: {expr}\n"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &yaml).unwrap();
    let mut c = promtool();
    c.arg("check").arg("rules").arg(&file);
    let (ok, out) = run(c);
    assert!(ok, "{out}\n--- rules\n{yaml}");
}

// ------------------------------------------------------------------ PromQL and YAML reading

/// What a PromQL expression refers to.
#[derive(Debug, Default, PartialEq)]
struct PromRefs {
    /// Metric names (identifiers that are not functions, keywords or label names).
    metrics: BTreeSet<String>,
    /// Label names in each metric's `{...}` matchers.
    matchers: BTreeMap<String, BTreeSet<String>>,
    /// Label names in `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` lists.
    grouping: BTreeSet<String>,
}

/// Aggregation operators, which may be followed by `by (...)` before their parenthesis.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}
fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal opening at `i`.
fn skip_string(s: &[char], i: usize) -> usize {
    let q = s[i];
    let mut j = i + 1;
    while j < s.len() && s[j] != q {
        if s[j] == '\\' && q != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Reads identifiers (label names) up to the bracket closing at `close`, skipping string
/// literals; returns them and the index past the closing bracket.
fn label_list(s: &[char], mut i: usize, close: char, only_before_operator: bool) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    while i < s.len() && s[i] != close {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(s, i);
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let name: String = s[start..i].iter().collect();
            let next = s.get(skip_ws(s, i)).copied();
            if !only_before_operator || matches!(next, Some('=' | '!')) {
                names.push(name);
            }
        } else {
            i += 1;
        }
    }
    (names, i + 1)
}

/// The metric names, matcher labels and grouping labels a PromQL expression uses. Function
/// calls, aggregation operators, keywords, label names, strings, numbers, durations, range
/// selectors and Grafana `$variables` are not metric names.
fn promql_refs(expr: &str) -> PromRefs {
    let s: Vec<char> = expr.chars().collect();
    let mut refs = PromRefs::default();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
        } else if c == '[' {
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // A selector without a metric name: `{job="x"}`.
            i = label_list(&s, i + 1, '}', true).1;
        } else if c == '$' {
            i += 1;
            if s.get(i) == Some(&'{') {
                while i < s.len() && s[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // Numbers and durations (1e9, 0x1f, 5m, 1h30m).
            while i < s.len() && (is_ident(s[i]) || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next_at = skip_ws(&s, i);
            let next = s.get(next_at).copied();
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if next == Some('(') {
                    let (names, end) = label_list(&s, next_at + 1, ')', false);
                    refs.grouping.extend(names);
                    i = end;
                }
            } else if next == Some('(')
                || AGGREGATIONS.contains(&lower.as_str())
                || KEYWORDS.contains(&lower.as_str())
            {
                // A function call, an aggregation or a keyword.
            } else {
                refs.metrics.insert(word.clone());
                let labels = refs.matchers.entry(word).or_default();
                if next == Some('{') {
                    let (names, end) = label_list(&s, next_at + 1, '}', true);
                    labels.extend(names);
                    i = end;
                }
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// The values of every `expr:` key in a YAML file: plain, quoted, or a `|`/`>` block.
fn yaml_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start().trim_start_matches("- ");
        i += 1;
        let Some(rest) = t.strip_prefix("expr:") else { continue };
        let key_column = line.len() - t.len();
        let rest = rest.trim();
        // Continuation lines: more indented than the key (blank lines inside blocks too).
        let mut more = Vec::new();
        while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > key_column) {
            more.push(lines[i].trim());
            i += 1;
        }
        let value = if rest.starts_with('|') || rest.starts_with('>') {
            more.join("\n")
        } else {
            let whole = std::iter::once(rest).chain(more).collect::<Vec<_>>().join(" ");
            let whole = whole.trim();
            if let Some(q) = whole.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
                q.replace("\\\"", "\"").replace("\\\\", "\\")
            } else if let Some(q) = whole.strip_prefix('\'').and_then(|w| w.strip_suffix('\'')) {
                q.replace("''", "'")
            } else {
                whole.split(" #").next().unwrap_or_default().to_owned()
            }
        };
        out.push(value.trim().to_owned());
    }
    out
}

#[test]
fn promql_reading() {
    let r = promql_refs(concat!(
        "histogram_quantile(0.99, sum by (job, path, le) (rate(http_request_duration_seconds_bucket",
        r#"{job="redisgate", path=~"/redis/{instance_id}/.*"}[5m]))) > 1"#
    ));
    assert_eq!(r.metrics, BTreeSet::from(["http_request_duration_seconds_bucket".to_owned()]));
    assert_eq!(r.grouping, BTreeSet::from(["job".to_owned(), "path".to_owned(), "le".to_owned()]));
    assert_eq!(
        r.matchers["http_request_duration_seconds_bucket"],
        BTreeSet::from(["job".to_owned(), "path".to_owned()])
    );
    let r = promql_refs(
        "max by (job, instance) (redis_connections_active) == bool 0\n  and on (job, instance) \
         sum(rate(x_total{a!~'b}c'}[$__rate_interval] offset 5m)) unless ignoring(z) y\n\
         # comment: not_a_metric\n or sum(z_total) by (k) / count without (w) (v) or time() - 1e9",
    );
    let want = ["redis_connections_active", "x_total", "y", "z_total", "v"];
    assert_eq!(r.metrics, want.iter().map(|s| (*s).to_owned()).collect());
    assert_eq!(r.grouping, ["job", "instance", "z", "k", "w"].iter().map(|s| (*s).to_owned()).collect());
    assert_eq!(r.matchers["x_total"], BTreeSet::from(["a".to_owned()]));
    assert_eq!(promql_refs(r#"absent(up{job="redisgate"})"#).metrics, BTreeSet::from(["up".to_owned()]));
    assert_eq!(
        grafana_variable_promql(r#"label_values(up{job="a,b"}, instance)"#).as_deref(),
        Some(r#"up{job="a,b"}"#)
    );
    assert_eq!(grafana_variable_promql("label_values(instance)"), None);
}

#[test]
fn yaml_expr_reading() {
    let yaml = r#"groups:
  - name: g
    rules:
      - alert: A
        expr: up == 0
        for: 1m
      - alert: B
        expr: |
          sum(a)
            /
          sum(b)

        for: 2m
      - alert: C
        expr: 'c{x="y"} > 1'
      - expr: "d{x=\"y\"}"
        record: r
"#;
    assert_eq!(yaml_exprs(yaml), ["up == 0", "sum(a)\n/\nsum(b)", "c{x=\"y\"} > 1", "d{x=\"y\"}"]);
}

// ------------------------------------------------------------------ the cross-check

/// A parsed scrape: sample names with the label names seen on them, and `# TYPE`s.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, BTreeSet<String>>,
    types: BTreeMap<String, String>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut sc = Scrape::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut parts = t.split_whitespace();
            if let (Some(n), Some(ty)) = (parts.next(), parts.next()) {
                sc.types.insert(n.to_owned(), ty.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let s: Vec<char> = line.chars().collect();
        let end = s.iter().position(|c| *c == '{' || c.is_whitespace()).unwrap_or(s.len());
        let name: String = s[..end].iter().collect();
        let labels = sc.samples.entry(name).or_default();
        if s.get(end) == Some(&'{') {
            labels.extend(label_list(&s, end + 1, '}', true).0);
        }
    }
    sc
}

/// Every query of the deployment files: (where, PromQL).
fn deploy_queries() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = yaml_exprs(&read("prometheus/alerts.yml"))
        .into_iter()
        .enumerate()
        .map(|(i, e)| (format!("alerts.yml expr #{}", i + 1), e))
        .collect();
    for (name, d) in dashboards() {
        out.extend(dashboard_queries(&name, &d));
    }
    out
}

/// Labels Prometheus attaches itself (target labels), or that histograms carry by format.
const SCRAPE_LABELS: &[&str] = &["job", "instance", "le"];

/// The names the deployment files query that the scrape lacks (with where they are used).
fn missing_from(scrape: &Scrape, queries: &[(String, String)]) -> Vec<String> {
    let mut missing = Vec::new();
    for (where_, q) in queries {
        let refs = promql_refs(q);
        for m in &refs.metrics {
            if m == "up" {
                continue; // added by Prometheus for each target
            }
            let Some(labels) = scrape.samples.get(m) else {
                missing.push(format!("metric {m} ({where_})"));
                continue;
            };
            if let Some(base) = m.strip_suffix("_bucket")
                && scrape.types.get(base).map(String::as_str) != Some("histogram")
            {
                missing.push(format!("{base} is not a histogram ({where_})"));
            }
            for l in &refs.matchers[m] {
                if !SCRAPE_LABELS.contains(&l.as_str()) && !labels.contains(l) {
                    missing.push(format!("label {l} on {m} ({where_})"));
                }
            }
        }
        for l in &refs.grouping {
            let on_some = refs.metrics.iter().any(|m| scrape.samples.get(m).is_some_and(|ls| ls.contains(l)));
            if !SCRAPE_LABELS.contains(&l.as_str()) && !on_some {
                missing.push(format!("grouping label {l} on none of {:?} ({where_})", refs.metrics));
            }
        }
    }
    missing
}

async fn scrape(g: &Gate) -> (u16, String) {
    let r = g.http.get(g.url("/metrics")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Drives the management API and both data planes (successes, a Redis error reply, bad tokens
/// and keys, a Redis outage with retries and a reconnect, a burst past the rate limit), then
/// checks that a scrape of `GET /metrics` holds every metric (and label) that alerts.yml and the
/// dashboards query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_deployment_queries_is_exported() {
    let queries = deploy_queries();
    assert!(queries.len() > 30, "too few queries found: {queries:?}");
    let mut redis = Redis::start().await;
    let limiter = Redis::start().await;
    let mut s = settings(&redis);
    // A rate this test's bursts exceed (and its other traffic does not), shared through a
    // limiter Redis as in a multi-replica deployment.
    s.rate_limit.per_second = 50;
    s.rate_limit.burst = 50;
    s.rate_limit.tokens = Some(redisgate_core::ratelimit::Rate { per_second: 50, burst: 50 });
    s.rate_limit.mode = redisgate_server::config::RateLimitMode::Distributed;
    s.rate_limit.redis_url = Some(limiter.url().into());
    let g = Gate::start(s).await;

    // Management API: accounts, an organization with a running local instance, API keys,
    // a taken e-mail, a failed login and a missing organization.
    let t = Tenant::new(&g, "ops@example.com").await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    let anon = Api::anon(&g);
    // A taken e-mail: the store refuses the insert (a failed metadata store operation).
    let (s, _) = anon
        .post("/auth/register", json!({"email": "ops@example.com", "password": "correct horse battery"}))
        .await;
    assert_eq!(s, 409);
    let (s, _) =
        anon.post("/auth/login", json!({"email": "ops@example.com", "password": "wrong password!!"})).await;
    assert_eq!(s, 401);
    assert_eq!(t.api.get("/api/organizations/00000000-0000-0000-0000-000000000000").await.0, 404);
    assert_eq!(t.api.get(&format!("/api/organizations/{}", t.org)).await.0, 200);

    // Data plane on the instance: commands, a Redis error reply, an unknown API key.
    let i = &t.instance;
    assert_eq!(redis_cmd(&g, i, &key, json!(["SET", "greeting", "hello"])).await.0, 200);
    assert_eq!(redis_cmd(&g, i, &key, json!(["GET", "greeting"])).await.0, 200);
    assert_eq!(redis_cmd(&g, i, &key, json!(["INCR", "greeting"])).await.0, 400);
    let bogus = "rg_00000000000000000000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(redis_cmd(&g, i, bogus, json!(["GET", "greeting"])).await.0, 401);

    // Standalone data plane: commands, a pipeline, a bad token.
    assert_eq!(g.post("/", r#"["SET","a","1"]"#).await.status(), 200);
    assert_eq!(g.post("/pipeline", r#"[["INCR","a"],["GET","a"]]"#).await.status(), 200);
    let r = g.http.post(g.url("/")).bearer_auth("not-a-token").body(r#"["GET","a"]"#).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // A Redis outage: commands fail, connection attempts fail, then the backend reconnects.
    redis.kill();
    let r = g.post("/", r#"["GET","a"]"#).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.post("/", r#"["PING"]"#).await.status() != 200 {
        assert!(Instant::now() < deadline, "the gateway never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Rate limiting: the key's budget runs out under a burst.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let burst = (0..50).map(|_| redis_cmd(&g, i, &key, json!(["PING"])));
        let res = futures_util::future::join_all(burst).await;
        if res.iter().any(|(s, _)| *s == 429) {
            break;
        }
        assert!(Instant::now() < deadline, "no request was ever rate limited (429)");
    }

    // Gauges may be refreshed in the background: scrape until complete or out of time.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = scrape(&g).await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        let missing = missing_from(&parse_scrape(&text), &queries);
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deployment files query series GET /metrics does not export:\n  {}\n--- scrape\n{text}",
            missing.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
