//! Where a configuration problem is written, so `warden check-config` can say `file:line`.
//!
//! The filter's [`ConfigError`](crate::config::ConfigError) names a field as a path
//! (`policies[1].cors.allow_origins[0]`); [`locate_field`] finds that path in the JSON text with a
//! small token scanner that keeps the object-key / array-index path of every value it passes.
//! Parse errors carry serde_json's own line and column instead ([`parse_error_position`]).
//! [`plugin_configs`] finds edge-warden's plugin configurations in an Envoy YAML file and maps
//! positions inside the embedded JSON to lines of the YAML file.

/// A place in a text: 1-based line, 1-based column (in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Where `field` (a [`ConfigError`](crate::config::ConfigError) path, `""` for the whole
/// configuration) is written in `json`: the member's key for an object member, the element for an
/// array element. A field that is not written (a default, or a required field left out) gives the
/// nearest enclosing value that is. `None` only when `json` is not valid JSON.
pub fn locate_field(json: &str, field: &str) -> Option<Position> {
    let mut scanner = Scanner {
        text: json.as_bytes(),
        at: 0,
        target: field,
        exact: None,
        nearest: None,
    };
    scanner.skip_whitespace();
    scanner.visit("", scanner.at);
    scanner.value("", 0)?;
    let offset = scanner.exact.or(scanner.nearest.map(|(_, at)| at))?;
    Some(position_of(json, offset))
}

/// Where serde_json stops when `json` does not parse as the plugin configuration: the same error
/// [`parse_raw`](crate::config::parse_raw) reports, with its position as data.
pub fn parse_error_position(json: &[u8]) -> Option<Position> {
    let error = serde_json::from_slice::<crate::config::RawConfig>(json).err()?;
    (error.line() > 0).then(|| Position {
        line: error.line(),
        column: error.column(),
    })
}

/// `reason` without serde_json's ` at line L column C` suffix, for when the position is
/// reported another way (the embedded JSON's line is not the YAML file's).
pub fn without_json_position(reason: &str, position: Position) -> &str {
    let suffix = format!(" at line {} column {}", position.line, position.column);
    reason.strip_suffix(suffix.as_str()).unwrap_or(reason)
}

fn position_of(text: &str, offset: usize) -> Position {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    Position {
        line: before.iter().filter(|&&b| b == b'\n').count() + 1,
        column: offset - line_start + 1,
    }
}

/// Recursive descent over JSON that records where the target path, or its longest written
/// prefix, starts. Paths are rendered the way `serde_path_to_error` and the config compiler write
/// them (`a.b[2].c`), so keys containing dots need no special case.
struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
    target: &'a str,
    exact: Option<usize>,
    /// The longest path so far that encloses the target, and where it starts.
    nearest: Option<(usize, usize)>,
}

impl Scanner<'_> {
    fn visit(&mut self, path: &str, offset: usize) {
        if self.exact.is_some() {
            return;
        }
        if path == self.target {
            self.exact = Some(offset);
            return;
        }
        let encloses = path.is_empty()
            || (self.target.starts_with(path)
                && matches!(self.target.as_bytes().get(path.len()), Some(b'.' | b'[')));
        if encloses && self.nearest.is_none_or(|(len, _)| path.len() > len) {
            self.nearest = Some((path.len(), offset));
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// One value starting at (or after whitespace before) `self.at`. `depth` bounds recursion
    /// the way serde_json does, so hostile nesting cannot overflow the stack.
    fn value(&mut self, path: &str, depth: usize) -> Option<()> {
        if depth > 128 {
            return None;
        }
        self.skip_whitespace();
        match self.peek()? {
            b'{' => {
                self.at += 1;
                self.skip_whitespace();
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip_whitespace();
                    let key_at = self.at;
                    let key = self.string()?;
                    let child = if path.is_empty() {
                        key
                    } else {
                        format!("{path}.{key}")
                    };
                    self.visit(&child, key_at);
                    self.expect(b':')?;
                    self.value(&child, depth + 1)?;
                    self.skip_whitespace();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.at += 1;
                self.skip_whitespace();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                for index in 0.. {
                    self.skip_whitespace();
                    let child = format!("{path}[{index}]");
                    self.visit(&child, self.at);
                    self.value(&child, depth + 1)?;
                    self.skip_whitespace();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
                None
            }
            b'"' => self.string().map(drop),
            _ => {
                // A number, true, false or null: runs to the next delimiter.
                let start = self.at;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.at += 1;
                }
                (self.at > start).then_some(())
            }
        }
    }

    /// A string token, decoded by serde_json itself so escapes in keys compare as the
    /// configuration's deserializer saw them.
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at;
        self.at += 1;
        loop {
            match self.peek()? {
                b'\\' => self.at += 2,
                b'"' => break,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        serde_json::from_slice(self.text.get(start..self.at)?).ok()
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use envoy_yaml::{plugin_configs, PluginConfig};

#[cfg(not(target_arch = "wasm32"))]
mod envoy_yaml {
    use saphyr::{LoadableYamlNode, MarkedYaml, YamlData};

    use super::Position;

    const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
    const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

    /// An edge-warden plugin configuration found in an Envoy YAML file.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PluginConfig {
        /// The JSON, as Envoy hands it to the filter.
        pub json: String,
        /// Where the value starts in the YAML file.
        pub start: Position,
        /// Whether every line of the JSON is a line of the YAML file (a `value: |` block), so
        /// [`Self::yaml_position`] is exact; otherwise it gives the value's first line.
        pub line_for_line: bool,
    }

    impl PluginConfig {
        /// The YAML file's position of a position inside [`Self::json`].
        pub fn yaml_position(&self, json: Position) -> Position {
            if self.line_for_line {
                Position {
                    line: self.start.line + json.line - 1,
                    column: self.start.column + json.column - 1,
                }
            } else {
                self.start
            }
        }
    }

    /// Every edge-warden plugin configuration in an Envoy YAML file: the `configuration.value`
    /// (`"@type": …google.protobuf.StringValue`) of each `envoy.extensions.filters.http.wasm.v3.Wasm`
    /// filter whose `root_id` is `edge_warden` or whose code is `…edge_warden.wasm`. Other wasm
    /// filters are left alone.
    pub fn plugin_configs(yaml: &str) -> Result<Vec<PluginConfig>, String> {
        let documents = MarkedYaml::load_from_str(yaml).map_err(|e| {
            format!(
                "{}: not valid YAML: {}",
                e.marker().line(),
                e.info().trim_end_matches('.')
            )
        })?;
        let mut found = Vec::new();
        for document in &documents {
            collect(document, yaml, &mut found)?;
        }
        Ok(found)
    }

    /// The key and value of `key` in a mapping.
    fn entry<'a, 'b>(
        node: &'a MarkedYaml<'b>,
        key: &str,
    ) -> Option<(&'a MarkedYaml<'b>, &'a MarkedYaml<'b>)> {
        match &node.data {
            YamlData::Mapping(map) => map.iter().find(|(k, _)| k.data.as_str() == Some(key)),
            _ => None,
        }
    }

    fn get<'a, 'b>(node: &'a MarkedYaml<'b>, key: &str) -> Option<&'a MarkedYaml<'b>> {
        entry(node, key).map(|(_, v)| v)
    }

    fn text<'a>(node: Option<&'a MarkedYaml>) -> Option<&'a str> {
        node.and_then(|n| n.data.as_str())
    }

    fn collect(node: &MarkedYaml, yaml: &str, found: &mut Vec<PluginConfig>) -> Result<(), String> {
        match &node.data {
            YamlData::Mapping(map) => {
                if text(get(node, "@type")) == Some(WASM_FILTER) {
                    if let Some(config) = edge_warden_config(node, yaml)? {
                        // An alias repeats a node with its original position: report it once.
                        if !found.iter().any(|c| c.start == config.start) {
                            found.push(config);
                        }
                        return Ok(());
                    }
                }
                for (_, value) in map.iter() {
                    collect(value, yaml, found)?;
                }
            }
            YamlData::Sequence(items) => {
                for item in items {
                    collect(item, yaml, found)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn edge_warden_config(wasm: &MarkedYaml, yaml: &str) -> Result<Option<PluginConfig>, String> {
        let Some(config) = get(wasm, "config") else {
            return Ok(None);
        };
        let filename = ["vm_config", "code", "local", "filename"]
            .iter()
            .try_fold(config, |n, k| get(n, k));
        let ours = text(get(config, "root_id")) == Some("edge_warden")
            || text(filename).is_some_and(|f| f.ends_with("edge_warden.wasm"));
        if !ours {
            return Ok(None);
        }
        let line = config.span.start.line();
        let Some((key, configuration)) = entry(config, "configuration") else {
            return Err(format!(
                "{line}: the edge-warden wasm filter has no `configuration`; add one with \
                 \"@type\": {STRING_VALUE} and the plugin configuration JSON in `value: |`"
            ));
        };
        let value = get(configuration, "value");
        match (text(get(configuration, "@type")), value) {
            (Some(STRING_VALUE), Some(value)) if value.data.as_str().is_some() => {
                Ok(Some(embedded(value, yaml)))
            }
            _ => Err(format!(
                "{}: the edge-warden `configuration` must have \"@type\": {STRING_VALUE} and \
                 the plugin configuration JSON as a string in `value` (`value: |`)",
                key.span.start.line()
            )),
        }
    }

    /// The JSON with where it is written. A literal block scalar (`value: |`) keeps every line
    /// and only removes the indentation, so JSON line n is YAML line start + n - 1; that is
    /// checked against the source text rather than assumed, since quoted or folded strings differ.
    fn embedded(value: &MarkedYaml, yaml: &str) -> PluginConfig {
        let json = value.data.as_str().unwrap_or_default();
        let start = Position {
            line: value.span.start.line(),
            column: value.span.start.col() + 1,
        };
        let indent = start.column - 1;
        let mut source = yaml.lines().skip(start.line.saturating_sub(1));
        let line_for_line = start.line > 0
            && json.lines().all(|json_line| {
                source.next().is_some_and(|yaml_line| {
                    let (lead, rest) = yaml_line.split_at(indent.min(yaml_line.len()));
                    if json_line.is_empty() {
                        yaml_line.trim().is_empty()
                    } else {
                        lead.bytes().all(|b| b == b' ') && rest == json_line
                    }
                })
            });
        PluginConfig {
            json: json.to_string(),
            start,
            line_for_line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
  "signature": { "window_seconds": 0 },
  "policies": [
    { "name": "a" },
    {
      "name": "b.c",
      "cors": { "allow_origins": ["https://x.example", "*"] }
    }
  ],
  "security_headers": { "headers": { "X.Odd\"Name": "remove" } }
}"#;

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    /// The text from `position` to the end of its line.
    fn text_at(text: &str, position: Position) -> &str {
        &text.lines().nth(position.line - 1).unwrap()[position.column - 1..]
    }

    #[test]
    fn paths_resolve_to_the_key_or_element_that_holds_them() {
        for (field, line, written) in [
            ("", 1, "{"),
            ("signature", 2, r#""signature": {"#),
            ("signature.window_seconds", 2, r#""window_seconds": 0 }"#),
            ("policies[0]", 4, r#"{ "name": "a" },"#),
            ("policies[1].name", 6, r#""name": "b.c","#),
            ("policies[1].cors.allow_origins[1]", 7, r#""*"] }"#),
            (
                "security_headers.headers.X.Odd\"Name",
                10,
                r#""X.Odd\"Name": "remove" } }"#,
            ),
        ] {
            let position = locate_field(JSON, field).unwrap_or_else(|| panic!("{field}"));
            assert_eq!(position.line, line, "{field}");
            let found = text_at(JSON, position);
            assert!(found.starts_with(written), "{field}: {found}");
        }
    }

    #[test]
    fn unwritten_fields_resolve_to_the_nearest_enclosing_value() {
        // Defaults and missing required fields are reported where their parent is written.
        assert_eq!(locate_field(JSON, "policies[0].match.path"), at(4, 5));
        assert_eq!(locate_field(JSON, "lockout.max_failures"), at(1, 1));
        // `policies[1` is a prefix of the text `policies[10]`, not an enclosing path.
        assert_eq!(locate_field(JSON, "policies[10].name"), at(3, 3));
        assert_eq!(locate_field(JSON, "signature.window"), at(2, 3));
    }

    #[test]
    fn invalid_json_locates_nothing() {
        assert_eq!(locate_field("{\"a\": [1, }", "a"), None);
        assert_eq!(locate_field(&"[".repeat(500), "a"), None);
    }

    #[test]
    fn parse_errors_keep_serde_json_position_and_the_reason_loses_it() {
        let json = "{\n  \"policies\": [{ \"name\": \"a\", \"sigature\": true }]\n}";
        let position = parse_error_position(json.as_bytes()).unwrap();
        assert_eq!(position.line, 2);
        let error = crate::config::parse_raw(json.as_bytes()).unwrap_err();
        assert_eq!(error.field, "policies[0].sigature");
        let suffix = format!(" at line 2 column {}", position.column);
        assert!(error.reason.ends_with(&suffix), "{error}");
        let reason = without_json_position(&error.reason, position);
        assert!(reason.starts_with("unknown field `sigature`, expected one of"));
        assert!(!reason.contains("line 2"), "{reason}");
        assert_eq!(parse_error_position(b"{\"policies\": []}"), None);
    }

    const YAML: &str = r#"static_resources:
  listeners:
  - filters:
    - name: edge_warden
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
        config:
          root_id: edge_warden
          configuration:
            "@type": type.googleapis.com/google.protobuf.StringValue
            value: |
              {
                "policies": []
              }
    - name: other
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
        config:
          root_id: bench
          configuration:
            "@type": type.googleapis.com/google.protobuf.StringValue
            value: "{}"
    - name: quoted
      typed_config: &quoted
        "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
        config:
          vm_config: { code: { local: { filename: /etc/envoy/edge_warden.wasm } } }
          configuration:
            "@type": type.googleapis.com/google.protobuf.StringValue
            value: "{\"policies\":
              []}"
    - name: again
      typed_config: *quoted
"#;

    #[test]
    fn envoy_yaml_yields_edge_warden_configs_with_their_lines() {
        let configs = plugin_configs(YAML).unwrap();
        assert_eq!(configs.len(), 2, "{configs:?}");
        let block = &configs[0];
        assert_eq!(block.json, "{\n  \"policies\": []\n}\n");
        assert!(block.line_for_line);
        assert_eq!(
            block.start,
            Position {
                line: 12,
                column: 15
            }
        );
        let inside = locate_field(&block.json, "policies").unwrap();
        assert_eq!(
            block.yaml_position(inside),
            Position {
                line: 13,
                column: 17
            }
        );
        assert_eq!(YAML.lines().nth(12).unwrap().find("\"policies\""), Some(16));

        // A quoted string is not line for line: positions fall back to where the value starts.
        let quoted = &configs[1];
        assert_eq!(quoted.json, "{\"policies\": []}");
        assert!(!quoted.line_for_line);
        assert_eq!(quoted.yaml_position(at(1, 5).unwrap()).line, 30);
    }

    #[test]
    fn an_edge_warden_filter_without_a_string_configuration_is_an_error() {
        let yaml = YAML.replace(
            "google.protobuf.StringValue\n            value: |",
            "google.protobuf.BytesValue\n            value: |",
        );
        let error = plugin_configs(&yaml).unwrap_err();
        assert!(
            error.starts_with("9: the edge-warden `configuration` must have"),
            "{error}"
        );
        let error = plugin_configs("a: [").unwrap_err();
        assert!(error.contains("not valid YAML"), "{error}");
    }
}
