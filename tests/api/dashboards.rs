//! The operator's files name only metrics the gateway really exports: every
//! PromQL expression in `deploy/grafana/image-gateway.json` (panels and
//! variable queries) and `deploy/prometheus/alerts.yml` is taken apart, and
//! each metric name in it must be a family the gateway declares
//! (`Metrics::family_names()`, with `_bucket`/`_sum`/`_count` for its
//! histograms), a `process_*` family seen in a live scrape, or `up`. A
//! renamed metric fails here instead of leaving an empty panel or an alert
//! that can never fire. The dashboard must also show every declared family.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use image_gateway::metrics::Metrics;
use serde_json::{Value, json};

use crate::helpers::*;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PromQL words that are never metric names when they stand alone.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
    // aggregation operators, which may be followed by `by (...)` before `(`
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
/// Modifiers followed by a parenthesised list of label names.
const LABEL_LIST_MODIFIERS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal that starts at `i` (", ' or `).
fn skip_string(s: &[char], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() {
        if s[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if s[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    panic!("unterminated string in {}", s.iter().collect::<String>());
}

/// The contents of the string literal at `i`, and the index past it.
fn string_at(s: &[char], i: usize) -> (String, usize) {
    let end = skip_string(s, i);
    let inner: String = s[i + 1..end - 1].iter().collect();
    (inner.replace("\\\"", "\"").replace("\\\\", "\\"), end)
}

/// Index just past the bracket group (`(`, `[` or `{`) that opens at `i`,
/// skipping strings inside it.
fn skip_group(s: &[char], i: usize) -> usize {
    let (open, close) = match s[i] {
        '(' => ('(', ')'),
        '[' => ('[', ']'),
        _ => ('{', '}'),
    };
    let mut depth = 0;
    let mut j = i;
    while j < s.len() {
        match s[j] {
            '"' | '\'' | '`' => {
                j = skip_string(s, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    panic!("unbalanced {open} in {}", s.iter().collect::<String>());
}

fn next_non_space(s: &[char], mut i: usize) -> Option<char> {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    s.get(i).copied()
}

/// Metric names selected by `{__name__="..."}` inside a matcher block.
fn names_in_matchers(block: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < block.len() {
        match block[i] {
            '"' | '\'' | '`' => i = skip_string(block, i),
            c if is_ident_start(c) => {
                let start = i;
                while i < block.len() && is_ident(block[i]) {
                    i += 1;
                }
                let label: String = block[start..i].iter().collect();
                if label == "__name__" {
                    while block[i].is_whitespace() {
                        i += 1;
                    }
                    let op: String = block[i..i + 2].iter().collect();
                    assert!(
                        op.starts_with('=') && op != "=~",
                        "only __name__=\"...\" can be checked, not {op}"
                    );
                    i += 1;
                    while block[i].is_whitespace() {
                        i += 1;
                    }
                    let (name, end) = string_at(block, i);
                    out.push(name);
                    i = end;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Every metric name a PromQL expression selects. Grafana variables
/// (`$job`, `${x}`, `$__rate_interval`) are ignored, as are functions,
/// aggregations, keywords, label names (in `{...}` and in `by (...)` and
/// friends), numbers, durations and strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let s: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&s, i),
            '#' => {
                while i < s.len() && s[i] != '\n' {
                    i += 1;
                }
            }
            '{' => {
                let end = skip_group(&s, i);
                names.extend(names_in_matchers(&s[i + 1..end - 1]));
                i = end;
            }
            '[' => i = skip_group(&s, i),
            '$' => {
                i += 1;
                if s.get(i) == Some(&'{') {
                    i = skip_group(&s, i);
                } else {
                    while i < s.len() && is_ident(s[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // numbers and durations: 0.95, 1e3, 0x1f, 5m, 1h30m
                while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
                let word: String = s[start..i].iter().collect();
                let lower = word.to_ascii_lowercase();
                let next = next_non_space(&s, i);
                if LABEL_LIST_MODIFIERS.contains(&lower.as_str()) {
                    if next == Some('(') {
                        while s[i] != '(' {
                            i += 1;
                        }
                        i = skip_group(&s, i);
                    }
                } else if next == Some('(') || KEYWORDS.contains(&lower.as_str()) {
                    // a function or aggregation: its arguments follow
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The value of every `expr:` key in a YAML file (plain, quoted or block
/// scalar), enough for Prometheus rule files without a YAML parser.
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let mut rest = line.trim_start();
        let mut column = line.len() - rest.len();
        if let Some(r) = rest.strip_prefix("- ") {
            let r2 = r.trim_start();
            column += 2 + (r.len() - r2.len());
            rest = r2;
        }
        let Some(value) = rest.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        let indented_after = |from: usize| -> Vec<&str> {
            lines[from..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > column)
                .copied()
                .collect()
        };
        let expr = if value.starts_with('|') || value.starts_with('>') {
            indented_after(n + 1).join("\n")
        } else if value.starts_with('"') {
            let chars: Vec<char> = value.chars().collect();
            string_at(&chars, 0).0
        } else if let Some(inner) = value.strip_prefix('\'') {
            // '' is a quote inside a single-quoted scalar
            let mut text = String::new();
            let mut chars = inner.chars().peekable();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        text.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => text.push(c),
                    None => panic!("unterminated quote on line {}", n + 1),
                }
            }
            text
        } else {
            let first = value.split(" #").next().unwrap_or_default();
            std::iter::once(first)
                .chain(indented_after(n + 1))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(!expr.trim().is_empty(), "empty expr on line {}", n + 1);
        out.push(expr);
    }
    out
}

/// The PromQL of a Grafana variable query (`label_values(selector, label)`,
/// `query_result(expr)`; `label_values(label)` selects no metric).
fn variable_promql(query: &str) -> Option<String> {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return inner
            .rsplit_once(',')
            .map(|(selector, _label)| selector.to_owned());
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(inner.to_owned());
    }
    if q.starts_with("label_names(") || q.is_empty() {
        return None;
    }
    panic!("variable query {q:?}: teach variable_promql this form");
}

/// (where, PromQL) for every query of a dashboard: each `expr` anywhere in
/// it, and each query variable.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
                for (k, child) in map {
                    match (k.as_str(), child) {
                        ("expr", Value::String(e)) => {
                            out.push((format!("panel {title:?}"), e.clone()))
                        }
                        ("templating", _) => {}
                        _ => walk(child, title, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or_default();
        if let Some(promql) = variable_promql(query) {
            out.push((format!("variable {}", var["name"]), promql));
        }
    }
    out
}

/// `# TYPE` of each family in a scrape.
fn scrape_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// Names a query may use: the declared families, with the series names of
/// histograms and summaries as the live scrape types them, the process_*
/// families of the live scrape, and Prometheus' own `up`.
fn exported_names(declared: &[String], scrape: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = declared.iter().cloned().collect();
    names.insert("up".to_owned());
    for (family, kind) in scrape_types(scrape) {
        if !(declared.contains(&family) || family.starts_with("process_")) {
            continue;
        }
        let suffixes: &[&str] = match kind.as_str() {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["_sum", "_count"],
            _ => &[],
        };
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        names.insert(family);
    }
    names
}

fn alert_count(rules_yaml: &str) -> usize {
    rules_yaml
        .lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .filter(|l| l.starts_with("alert:") || l.starts_with("record:"))
        .count()
}

#[actix_web::test]
async fn every_metric_in_the_dashboard_and_alert_rules_is_one_the_gateway_exports() {
    // Arrange: a live gateway whose histograms all have series.
    let app = spawn_app().await;
    let res = app
        .post_generation(json!({"prompt": "a dashboard check"}))
        .await;
    assert_eq!(res.status(), 200);
    let scrape = app.metrics().await;
    let declared = Metrics::new().family_names();
    let exported = exported_names(&declared, &scrape);
    for histogram in [
        "image_gateway_http_request_duration_seconds_bucket",
        "image_gateway_upstream_request_duration_seconds_bucket",
        "image_gateway_upstream_job_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(
            exported.contains(histogram),
            "{histogram} not in the scrape:\n{scrape}"
        );
    }

    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/image-gateway.json"))
        .expect("the dashboard is JSON");
    let rules = read("deploy/prometheus/alerts.yml");
    let alert_exprs = yaml_exprs(&rules);
    assert_eq!(
        alert_exprs.len(),
        alert_count(&rules),
        "one expr per rule in alerts.yml"
    );
    let mut queries = dashboard_exprs(&dashboard);
    let panel_queries = queries.len();
    queries.extend(
        alert_exprs
            .into_iter()
            .map(|e| ("alerts.yml".to_owned(), e)),
    );

    // Act
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric found in {expr}");
        for name in names {
            if !exported.contains(&name) {
                unknown.push(format!("{place}: {name}\n    in {expr}"));
            }
            used.insert(name);
        }
    }

    // Assert
    assert!(
        panel_queries >= 30,
        "only {panel_queries} dashboard queries found"
    );
    assert!(
        unknown.is_empty(),
        "metrics the gateway does not export:\n{}\nexported: {exported:?}",
        unknown.join("\n")
    );
    println!(
        "{} queries ({panel_queries} in the dashboard) use {} metric names, all exported",
        queries.len(),
        used.len()
    );
}

#[actix_web::test]
async fn the_dashboard_shows_every_metric_family_the_gateway_declares() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/image-gateway.json"))
        .expect("the dashboard is JSON");
    let used: BTreeSet<String> = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();

    let missing: Vec<String> = Metrics::new()
        .family_names()
        .into_iter()
        .filter(|family| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|s| used.contains(&format!("{family}{s}")))
        })
        .collect();

    assert!(
        missing.is_empty(),
        "families with no panel in deploy/grafana/image-gateway.json: {missing:?}"
    );
}

#[test]
fn metric_names_are_found_past_functions_labels_keywords_and_variables() {
    let cases: &[(&str, &[&str])] = &[
        ("up", &["up"]),
        (
            r#"sum by (job, le) (rate(a_bucket{job=~"$job", route!~"/healthz|/x{1}"}[$__rate_interval]))"#,
            &["a_bucket"],
        ),
        (
            "histogram_quantile(0.95, sum(rate(x_seconds_bucket[5m])) by (le)) > 1e3",
            &["x_seconds_bucket"],
        ),
        (
            "a_total / on (instance) group_left (version) b_info * ignoring(x) c",
            &["a_total", "b_info", "c"],
        ),
        (
            "rate(a_total[1h30m:1m] offset 5m) and bool b unless c or d",
            &["a_total", "b", "c", "d"],
        ),
        (
            r#"label_replace(x{a="b"}, "dst", "$1", "src", "(.*)") + time() - vector(1)"#,
            &["x"],
        ),
        (
            r#"{__name__="by_name", job="j"} + absent(z{q=~"by|on"})"#,
            &["by_name", "z"],
        ),
        (
            "max without (pod) (ns:rec:rate5m) # a comment naming not_a_metric",
            &["ns:rec:rate5m"],
        ),
        ("topk(5, m) > Inf or n < -NaN", &["m", "n"]),
        (
            "time() - max by (instance) (process_start_time_seconds{job=~\"${job}\"})",
            &["process_start_time_seconds"],
        ),
    ];
    for (expr, want) in cases {
        let got: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(got, *want, "{expr}");
    }
}

#[test]
fn yaml_exprs_reads_plain_quoted_and_block_scalars() {
    let yaml = r#"
groups:
  - name: g
    rules:
      - alert: A
        expr: up == 0
        for: 1m
      - alert: B
        expr: 'sum(x{a="it''s"}) > 1'
      - alert: C
        expr: "rate(y[5m]) > 0"
      - expr: |
          sum(z)
            /
          sum(w)
        record: r:z
      - alert: D
        expr: >-
          v
          > 2
        labels:
          severity: warning
"#;
    let got = yaml_exprs(yaml);
    assert_eq!(
        got,
        vec![
            "up == 0".to_owned(),
            "sum(x{a=\"it's\"}) > 1".to_owned(),
            "rate(y[5m]) > 0".to_owned(),
            "          sum(z)\n            /\n          sum(w)".to_owned(),
            "          v\n          > 2".to_owned(),
        ]
    );
    assert_eq!(alert_count(yaml), 5);
}

#[test]
fn grafana_variable_queries_yield_their_selector() {
    assert_eq!(
        variable_promql(r#"label_values(image_gateway_build_info{job=~"$job"}, instance)"#)
            .as_deref(),
        Some(r#"image_gateway_build_info{job=~"$job"}"#)
    );
    assert_eq!(variable_promql("label_values(job)"), None);
    assert_eq!(
        variable_promql("query_result(up == 1)").as_deref(),
        Some("up == 1")
    );
}
