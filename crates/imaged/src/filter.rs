//! containerd's filter language, parsed once and matched by the store for
//! every wire API.
//!
//! A filter is `selector ("," selector)*`; all selectors must match (AND).
//! A list of filters matches when any one filter matches (OR); an empty list,
//! or an empty filter, matches everything. A selector is
//! `fieldpath [op value]`:
//! - `fieldpath` is fields joined by `.`; a field is `[A-Za-z0-9_-]+` or a
//!   quoted string;
//! - `op` is `==` (present and equal), `!=` (not equal; an absent field counts
//!   as empty), or `~=` (regular expression, matched anywhere in the value);
//!   without `op` the selector tests presence;
//! - `value` is a quoted string or a run of characters other than `,` and
//!   white space.
//!
//! Quoted strings are delimited by `"`, `/` or `|` (the last two are handy for
//! regular expressions) and take Go's escapes: `\a \b \f \n \r \t \v \\`,
//! the delimiter itself, `\xHH`, `\uHHHH`, `\UHHHHHHHH` and octal `\NNN`.
//!
//! imaged adds comparisons: `<`, `<=`, `>`, `>=` (and `==`, `!=`) on
//! `target.size` (bytes), `created_at` and `updated_at` (RFC 3339 times, or a
//! bare date meaning midnight UTC), e.g. `target.size>=1000000` or
//! `created_at<2024-06-01`.
//!
//! imaged adds the field `protected` of an image, `true` or `false`: whether
//! it carries the label that protects it (`protected==true`), and its
//! `repository`, the name before its last `:tag` or `@digest`
//! (`repository==docker.io/library/redis`). Repositories are filtered on
//! `name`, `tags` (compared as a number) and `updated_at`.
//!
//! Where containerd quietly matches nothing, imaged refuses with
//! INVALID_ARGUMENT: an unknown field path, or a regular expression that does
//! not compile. Regular expressions use the `regex` crate's engine
//! (`regex-automata`'s meta regex), whose matching time is linear in the
//! input. One request's expressions share one budget ([`RegexLimits`]): at
//! most so many of them, and a bound on the bytes all of them take compiled,
//! their matching caches included, so one request can neither hold much
//! memory nor spend long compiling. Each expression's lazy DFA cache is
//! bounded ([`REGEX_CACHE_BYTES`]); past it the engine falls back to a
//! slower automaton, still linear in the input.

use std::sync::RwLock;

use imaged_types::time::unix_nanos;
use imaged_types::{Image, Labels, Repository, ValidationError, repository_of};
use regex_automata::meta;

/// Most filters in one request.
pub const MAX_FILTERS: usize = 64;
/// Longest filter string, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Longest regular expression, in bytes.
pub const MAX_REGEX_BYTES: usize = 1024;
/// Largest compiled regular expression, in bytes; this bounds compile time.
pub const MAX_REGEX_COMPILED_BYTES: usize = 1 << 20;
/// The lazy DFA cache of one regular expression, in bytes, per thread that
/// matches with it; counted in the request's budget.
pub const REGEX_CACHE_BYTES: usize = 256 << 10;

/// What one request's regular expressions may take, together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegexLimits {
    /// Regular-expression selectors (`~=`) in one request's filters.
    pub max_regexes: usize,
    /// Bytes all of them take compiled, with their caches.
    pub budget_bytes: usize,
}

impl Default for RegexLimits {
    fn default() -> Self {
        RegexLimits {
            max_regexes: crate::shares::defaults::MAX_REGEX_FILTERS as usize,
            budget_bytes: (crate::shares::defaults::REGEX_BUDGET_KB << 10) as usize,
        }
    }
}

/// The bounds in force: filters are parsed in every API, so they are the
/// process's, set at start and at SIGHUP.
static REGEX_LIMITS: RwLock<Option<RegexLimits>> = RwLock::new(None);

/// Puts `limits` in force for every filter parsed from now on.
pub fn set_regex_limits(limits: RegexLimits) {
    *REGEX_LIMITS.write().unwrap_or_else(|e| e.into_inner()) = Some(limits);
}

fn regex_limits() -> RegexLimits {
    REGEX_LIMITS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_default()
}

/// A compiled regular expression and its source.
#[derive(Debug, Clone)]
pub struct Pattern {
    regex: meta::Regex,
    source: String,
}

impl Pattern {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether it matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    /// Bytes it takes: compiled, and one matching cache.
    fn bytes(&self) -> usize {
        self.regex.memory_usage() + REGEX_CACHE_BYTES
    }
}

/// What a list of filters is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Images: `name`, `target.digest`, `target.mediatype`, `labels.<key>`,
    /// `annotations.<key>`.
    Image,
    /// Namespaces: `name`, `labels.<key>`.
    Namespace,
    /// Leases: `id` (read as [`Field::Name`]), `labels.<key>`.
    Lease,
    /// Events of containerd's Events service: `namespace`, `topic`,
    /// `event.name` (read as [`Field::Name`]), `event.labels.<key>`.
    Event,
    /// Repositories: `name`, `tags` and `updated_at` (its last change).
    Repository,
}

/// A field a selector reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The name.
    Name,
    /// The target's digest.
    TargetDigest,
    /// The target's media type.
    TargetMediaType,
    /// A label.
    Label(String),
    /// An annotation of the target.
    Annotation(String),
    /// The target's size, compared as a number.
    TargetSize,
    /// The creation time, compared as nanoseconds since the epoch.
    CreatedAt,
    /// The last change time, compared as nanoseconds since the epoch.
    UpdatedAt,
    /// An event's namespace.
    Namespace,
    /// An event's topic.
    Topic,
    /// Whether an image is protected: `true` or `false`, always present.
    Protected,
    /// An image's repository: its name before its last `:tag` or `@digest`.
    Repository,
    /// How many images a repository holds, compared as a number.
    Tags,
}

impl Field {
    /// Whether the field is compared as a number (size or time).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            Field::TargetSize | Field::CreatedAt | Field::UpdatedAt | Field::Tags
        )
    }
}

/// A comparison of a numeric field with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Cmp {
    /// Whether `left op right` holds.
    pub fn holds(self, left: i64, right: i64) -> bool {
        match self {
            Cmp::Eq => left == right,
            Cmp::Ne => left != right,
            Cmp::Lt => left < right,
            Cmp::Le => left <= right,
            Cmp::Gt => left > right,
            Cmp::Ge => left >= right,
        }
    }
}

/// A selector's test.
#[derive(Debug, Clone)]
pub enum Op {
    /// The field is present.
    Present,
    /// The field is present and equal.
    Equal(String),
    /// The field (empty when absent) differs.
    NotEqual(String),
    /// The field (empty when absent) matches the expression somewhere.
    Matches(Pattern),
    /// The numeric field compares with the value.
    Compare(Cmp, i64),
}

/// One `fieldpath op value` test.
#[derive(Debug, Clone)]
pub struct Selector {
    /// What is read.
    pub field: Field,
    /// How it is tested.
    pub op: Op,
}

/// A parsed list of filters: an OR of ANDs of selectors.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The alternatives; empty matches everything.
    any: Vec<Vec<Selector>>,
    /// Bytes its regular expressions take.
    regex_bytes: usize,
}

/// Something filters can read fields of.
pub trait Fields {
    /// The field's value, or `None` when it is absent.
    fn field(&self, field: &Field) -> Option<&str>;

    /// A numeric field's value (sizes in bytes, times in nanoseconds since the
    /// epoch), or `None` when the subject has no such field.
    fn number(&self, _field: &Field) -> Option<i64> {
        None
    }
}

impl Fields for Image {
    fn field(&self, field: &Field) -> Option<&str> {
        match field {
            Field::Name => Some(self.name.as_str()),
            Field::TargetDigest => Some(self.target.digest.as_str()),
            Field::TargetMediaType => Some(self.target.media_type.as_str()),
            Field::Label(key) => self.labels.get(key).map(String::as_str),
            Field::Annotation(key) => self.target.annotations.get(key).map(String::as_str),
            Field::Protected => Some(if self.protected() { "true" } else { "false" }),
            Field::Repository => Some(repository_of(&self.name)),
            Field::TargetSize | Field::CreatedAt | Field::UpdatedAt | Field::Namespace | Field::Topic | Field::Tags => {
                None
            }
        }
        .filter(|v| !v.is_empty())
    }

    fn number(&self, field: &Field) -> Option<i64> {
        match field {
            Field::TargetSize => Some(self.target.size),
            Field::CreatedAt => Some(unix_nanos(self.created_at)),
            Field::UpdatedAt => Some(unix_nanos(self.updated_at)),
            _ => None,
        }
    }
}

/// The fields of an event of containerd's Events service.
pub struct EventFields<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its topic.
    pub topic: &'a str,
    /// The name its payload carries, when imaged knows the payload.
    pub name: Option<&'a str>,
    /// The labels its payload carries, likewise.
    pub labels: Option<&'a Labels>,
}

impl Fields for EventFields<'_> {
    fn field(&self, field: &Field) -> Option<&str> {
        match field {
            Field::Namespace => Some(self.namespace),
            Field::Topic => Some(self.topic),
            Field::Name => self.name,
            Field::Label(key) => self.labels.and_then(|l| l.get(key)).map(String::as_str),
            _ => None,
        }
        .filter(|v| !v.is_empty())
    }
}

impl Fields for Repository {
    fn field(&self, field: &Field) -> Option<&str> {
        match field {
            Field::Name => Some(self.name.as_str()),
            _ => None,
        }
        .filter(|v| !v.is_empty())
    }

    fn number(&self, field: &Field) -> Option<i64> {
        match field {
            Field::Tags => i64::try_from(self.tags).ok(),
            Field::UpdatedAt => Some(unix_nanos(self.updated_at)),
            _ => None,
        }
    }
}

/// The fields of a namespace (or of a lease, whose id reads as the name).
pub struct NamespaceFields<'a> {
    /// The name, or a lease's id.
    pub name: &'a str,
    /// The labels.
    pub labels: &'a Labels,
}

impl Fields for NamespaceFields<'_> {
    fn field(&self, field: &Field) -> Option<&str> {
        match field {
            Field::Name => Some(self.name),
            Field::Label(key) => self.labels.get(key).map(String::as_str),
            _ => None,
        }
        .filter(|v| !v.is_empty())
    }
}

impl Filter {
    /// A filter that matches everything.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Parses `filters` (OR of each); `field` names the request field in
    /// errors, e.g. `filters`.
    pub fn parse(subject: Subject, field: &str, filters: &[String]) -> Result<Filter, ValidationError> {
        if filters.len() > MAX_FILTERS {
            return Err(ValidationError::new(
                field,
                &format!("{} filters", filters.len()),
                format!("at most {MAX_FILTERS} filters are allowed"),
            ));
        }
        // A first pass counts the regular expressions without compiling
        // any, so a request with too many costs nothing to refuse.
        let limits = regex_limits();
        let mut counting = Budget {
            limits,
            used: 0,
            count: 0,
            field: field.to_owned(),
            compile: false,
        };
        Filter::parse_with(subject, field, filters, &mut counting)?;
        let mut budget = Budget {
            compile: true,
            ..counting
        };
        budget.count = 0;
        Filter::parse_with(subject, field, filters, &mut budget)
    }

    fn parse_with(
        subject: Subject,
        field: &str,
        filters: &[String],
        budget: &mut Budget,
    ) -> Result<Filter, ValidationError> {
        let mut any = Vec::with_capacity(filters.len());
        for (i, text) in filters.iter().enumerate() {
            let at = format!("{field}[{i}]");
            if text.len() > MAX_FILTER_BYTES {
                return Err(ValidationError::new(
                    at,
                    text,
                    format!("is {} bytes, more than {MAX_FILTER_BYTES}", text.len()),
                ));
            }
            if text.is_empty() {
                // An empty filter matches everything, and so does the OR.
                return Ok(Filter::all());
            }
            let selectors = Parser::new(text, subject, budget)
                .selectors()
                .map_err(|(pos, reason)| ValidationError::new(at, text, format!("at position {pos}: {reason}")))?;
            any.push(selectors);
        }
        Ok(Filter {
            any,
            regex_bytes: budget.used,
        })
    }

    /// Bytes the filter's regular expressions take, compiled and with their
    /// caches: what a watcher holding it is charged.
    pub fn regex_bytes(&self) -> usize {
        self.regex_bytes
    }

    /// The alternatives (OR), each a list of selectors (AND).
    pub fn alternatives(&self) -> &[Vec<Selector>] {
        &self.any
    }

    /// Whether the filter matches everything (no filters were given), so a
    /// subject need not be read to be tested.
    pub fn matches_everything(&self) -> bool {
        self.any.is_empty()
    }

    /// Whether `subject` matches.
    pub fn matches(&self, subject: &impl Fields) -> bool {
        self.any.is_empty() || self.any.iter().any(|all| all.iter().all(|s| s.matches(subject)))
    }
}

impl Selector {
    fn matches(&self, subject: &impl Fields) -> bool {
        if self.field.is_numeric() {
            let value = subject.number(&self.field);
            return match &self.op {
                Op::Compare(cmp, want) => value.is_some_and(|v| cmp.holds(v, *want)),
                Op::Present => value.is_some(),
                _ => false,
            };
        }
        let value = subject.field(&self.field);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value == Some(want.as_str()),
            Op::NotEqual(want) => value.unwrap_or("") != want,
            Op::Matches(re) => re.is_match(value.unwrap_or("")),
            Op::Compare(..) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Eof,
    Field(String),
    Quoted(String),
    Value(String),
    Separator(char),
    Operator(String),
}

type ParseResult<T> = Result<T, (usize, String)>;

/// A scanner and recursive-descent parser over one filter string. Positions
/// are byte offsets.
struct Parser<'a> {
    input: &'a str,
    pos: usize,
    after_operator: bool,
    subject: Subject,
    budget: &'a mut Budget,
}

/// What a request's regular expressions have taken of [`RegexLimits`] so
/// far.
struct Budget {
    limits: RegexLimits,
    used: usize,
    count: usize,
    /// The request field, for messages.
    field: String,
    /// False on the first pass, which only counts.
    compile: bool,
}

/// What the counting pass puts where a regular expression goes.
static UNCOMPILED: std::sync::LazyLock<Pattern> =
    std::sync::LazyLock::new(|| compile("", 1 << 16).unwrap_or_else(|_| unreachable!("the empty expression compiles")));

impl Budget {
    /// Compiles `pattern` within what is left, and charges it.
    fn compile(&mut self, pattern: &str) -> Result<Pattern, String> {
        if self.count >= self.limits.max_regexes {
            return Err(format!(
                "more than {} regular expressions (~=) in {}, the most one request may hold (max_regex_filters)",
                self.limits.max_regexes, self.field
            ));
        }
        if !self.compile {
            self.count += 1;
            return Ok(UNCOMPILED.clone());
        }
        let left = self.limits.budget_bytes.saturating_sub(self.used + REGEX_CACHE_BYTES);
        let limit = left.min(MAX_REGEX_COMPILED_BYTES);
        let pattern = compile(pattern, limit).map_err(|e| match e {
            Compile::TooLarge if left < MAX_REGEX_COMPILED_BYTES => format!(
                "the regular expressions of {} may take {} KiB compiled, all together (regex_budget_kb); {} KiB \
                 are taken by the ones before it, and this one needs more than the {} KiB left",
                self.field,
                self.limits.budget_bytes >> 10,
                self.used >> 10,
                left >> 10
            ),
            Compile::TooLarge => format!(
                "the regular expression compiles to more than {} KiB, the most one may take",
                MAX_REGEX_COMPILED_BYTES >> 10
            ),
            Compile::Invalid(e) => e,
        })?;
        self.count += 1;
        self.used += pattern.bytes();
        if self.used > self.limits.budget_bytes {
            return Err(format!(
                "the regular expressions of {} take {} KiB compiled, more than the {} KiB one request may hold \
                 (regex_budget_kb)",
                self.field,
                self.used >> 10,
                self.limits.budget_bytes >> 10
            ));
        }
        Ok(pattern)
    }
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl<'a> Parser<'a> {
    fn new(input: &'a str, subject: Subject, budget: &'a mut Budget) -> Self {
        Parser {
            input,
            pos: 0,
            after_operator: false,
            subject,
            budget,
        }
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c| !f(c)).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    /// The next token and where it starts.
    fn scan(&mut self) -> ParseResult<(usize, Token)> {
        self.skip_space();
        let start = self.pos;
        let Some(c) = self.rest().chars().next() else {
            return Ok((start, Token::Eof));
        };
        if c == '\0' {
            return Err((start, "unexpected NUL".into()));
        }
        if is_quote(c) {
            return Ok((start, Token::Quoted(self.quoted(c)?)));
        }
        if c == ',' || c == '.' {
            self.pos += 1;
            self.after_operator = false;
            return Ok((start, Token::Separator(c)));
        }
        if matches!(c, '=' | '!' | '~' | '<' | '>') {
            let op = self.take_while(|c| matches!(c, '=' | '!' | '~' | '<' | '>'));
            self.after_operator = true;
            return Ok((start, Token::Operator(op.to_owned())));
        }
        if self.after_operator {
            self.after_operator = false;
            return Ok((start, Token::Value(self.take_while(is_value_char).to_owned())));
        }
        if is_field_char(c) {
            return Ok((start, Token::Field(self.take_while(is_field_char).to_owned())));
        }
        Err((start, format!("unexpected character {c:?}")))
    }

    fn peek(&mut self) -> ParseResult<Token> {
        let (pos, after) = (self.pos, self.after_operator);
        let token = self.scan().map(|(_, t)| t);
        self.pos = pos;
        self.after_operator = after;
        token
    }

    /// Reads a quoted string opened by `quote` at the current position and
    /// returns its unescaped text.
    fn quoted(&mut self, quote: char) -> ParseResult<String> {
        let start = self.pos;
        self.pos += quote.len_utf8();
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.rest().chars().next() else {
                return Err((start, "quoted literal not terminated".into()));
            };
            let at = self.pos;
            self.pos += c.len_utf8();
            match c {
                '\n' => return Err((start, "quoted literal not terminated".into())),
                c if c == quote => break,
                '\\' => self.escape(quote, at, &mut out)?,
                c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        String::from_utf8(out).map_err(|_| (start, "quoted literal is not valid UTF-8".into()))
    }

    fn escape(&mut self, quote: char, at: usize, out: &mut Vec<u8>) -> ParseResult<()> {
        let bad = || (at, "illegal escape sequence".to_string());
        let c = self.rest().chars().next().ok_or_else(bad)?;
        self.pos += c.len_utf8();
        let simple = match c {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            c if c == quote => Some(c as u8),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        let (digits, radix) = match c {
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            '0'..='7' => {
                self.pos -= 1;
                (3, 8)
            }
            _ => return Err(bad()),
        };
        let text = self.rest().get(..digits).ok_or_else(bad)?;
        let value = u32::from_str_radix(text, radix).map_err(|_| bad())?;
        self.pos += digits;
        match c {
            'x' => out.push(value as u8),
            '0'..='7' if value <= 255 => out.push(value as u8),
            '0'..='7' => return Err(bad()),
            _ => {
                let ch = char::from_u32(value).ok_or_else(bad)?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
        Ok(())
    }

    fn selectors(&mut self) -> ParseResult<Vec<Selector>> {
        let mut all = vec![self.selector()?];
        loop {
            let (pos, token) = self.scan()?;
            match token {
                Token::Eof => return Ok(all),
                Token::Separator(',') => all.push(self.selector()?),
                other => return Err((pos, format!("unexpected {}; expected ',' or the end", describe(&other)))),
            }
        }
    }

    fn selector(&mut self) -> ParseResult<Selector> {
        let start = {
            self.skip_space();
            self.pos
        };
        let path = self.fieldpath()?;
        let field = self.resolve(start, &path)?;
        if matches!(self.peek()?, Token::Eof | Token::Separator(',')) {
            return Ok(Selector { field, op: Op::Present });
        }
        let (pos, token) = self.scan()?;
        let op = match token {
            Token::Operator(op) => op,
            other => {
                return Err((
                    pos,
                    format!("unexpected {}; expected an operator (==, !=, ~=)", describe(&other)),
                ));
            }
        };
        let (value_pos, value) = match self.scan()? {
            (pos, Token::Value(v) | Token::Field(v) | Token::Quoted(v)) => (pos, v),
            (pos, other) => return Err((pos, format!("unexpected {}; expected a value", describe(&other)))),
        };
        if field.is_numeric() {
            let cmp = match op.as_str() {
                "==" => Cmp::Eq,
                "!=" => Cmp::Ne,
                "<" => Cmp::Lt,
                "<=" => Cmp::Le,
                ">" => Cmp::Gt,
                ">=" => Cmp::Ge,
                other => {
                    return Err((
                        pos,
                        format!("unsupported operator {other:?} for a number or time; expected ==, !=, <, <=, > or >="),
                    ));
                }
            };
            let number = match field {
                Field::TargetSize => value
                    .parse::<i64>()
                    .map_err(|_| (value_pos, format!("{value:?} is not a size in bytes")))?,
                Field::Tags => value
                    .parse::<i64>()
                    .map_err(|_| (value_pos, format!("{value:?} is not a count of images")))?,
                _ => unix_nanos(
                    imaged_types::time::parse_rfc3339(&value).map_err(|e| (value_pos, format!("{value:?}: {e}")))?,
                ),
            };
            return Ok(Selector {
                field,
                op: Op::Compare(cmp, number),
            });
        }
        if field == Field::Protected && !matches!(value.as_str(), "true" | "false") {
            return Err((
                value_pos,
                format!("{value:?} is not a protection; expected true or false"),
            ));
        }
        let op = match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "~=" => Op::Matches(self.budget.compile(&value).map_err(|e| (value_pos, e))?),
            "<" | "<=" | ">" | ">=" => {
                return Err((
                    pos,
                    format!(
                        "operator {op:?} compares numbers and times only (target.size, created_at, updated_at; \
                         a repository's tags)"
                    ),
                ));
            }
            other => return Err((pos, format!("unsupported operator {other:?}; expected ==, != or ~="))),
        };
        Ok(Selector { field, op })
    }

    fn fieldpath(&mut self) -> ParseResult<Vec<String>> {
        let mut path = vec![self.field()?];
        while self.peek()? == Token::Separator('.') {
            self.scan()?;
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> ParseResult<String> {
        match self.scan()? {
            (_, Token::Field(f) | Token::Quoted(f)) => Ok(f),
            (pos, other) => Err((pos, format!("unexpected {}; expected a field name", describe(&other)))),
        }
    }

    /// Maps a field path to a [`Field`] of the subject.
    fn resolve(&self, pos: usize, path: &[String]) -> ParseResult<Field> {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        let field = match (self.subject, parts.as_slice()) {
            (Subject::Lease, ["id"]) => Some(Field::Name),
            (Subject::Image | Subject::Namespace | Subject::Repository, ["name"]) => Some(Field::Name),
            (Subject::Repository, ["tags"]) => Some(Field::Tags),
            (Subject::Repository, ["updated_at"]) => Some(Field::UpdatedAt),
            (Subject::Repository, _) => None,
            (Subject::Event, ["namespace"]) => Some(Field::Namespace),
            (Subject::Event, ["topic"]) => Some(Field::Topic),
            (Subject::Event, ["event", "name"]) => Some(Field::Name),
            (Subject::Event, ["event", "labels", key @ ..]) if !key.is_empty() => Some(Field::Label(key.join("."))),
            (Subject::Event, _) => None,
            (Subject::Image, ["target", "digest"]) => Some(Field::TargetDigest),
            (Subject::Image, ["target", "mediatype"]) => Some(Field::TargetMediaType),
            (Subject::Image, ["target", "size"]) => Some(Field::TargetSize),
            (Subject::Image, ["created_at"]) => Some(Field::CreatedAt),
            (Subject::Image, ["updated_at"]) => Some(Field::UpdatedAt),
            (Subject::Image, ["protected"]) => Some(Field::Protected),
            (Subject::Image, ["repository"]) => Some(Field::Repository),
            (_, ["labels", key @ ..]) if !key.is_empty() => Some(Field::Label(key.join("."))),
            (Subject::Image, ["annotations", key @ ..]) if !key.is_empty() => Some(Field::Annotation(key.join("."))),
            _ => None,
        };
        field.ok_or_else(|| {
            let known = match self.subject {
                Subject::Image => {
                    "name, repository, target.digest, target.mediatype, target.size, created_at, updated_at, \
                     protected, labels.<key>, annotations.<key>"
                }
                Subject::Repository => "name, tags, updated_at",
                Subject::Namespace => "name, labels.<key>",
                Subject::Lease => "id, labels.<key>",
                Subject::Event => "namespace, topic, event.name, event.labels.<key>",
            };
            (
                pos,
                format!("unknown field {:?}; known fields: {known}", path.join(".")),
            )
        })
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Eof => "end of filter".into(),
        Token::Field(s) | Token::Value(s) => format!("{s:?}"),
        Token::Quoted(s) => format!("quoted {s:?}"),
        Token::Separator(c) => format!("{c:?}"),
        Token::Operator(s) => format!("operator {s:?}"),
    }
}

/// Why a regular expression did not compile.
enum Compile {
    /// Its automata would take more than the limit.
    TooLarge,
    /// It is not one, or too long: why.
    Invalid(String),
}

/// Compiles a regular expression of at most [`MAX_REGEX_BYTES`] whose
/// automata take at most `limit` bytes.
fn compile(pattern: &str, limit: usize) -> Result<Pattern, Compile> {
    if pattern.len() > MAX_REGEX_BYTES {
        return Err(Compile::Invalid(format!(
            "regular expression is {} bytes, more than {MAX_REGEX_BYTES}",
            pattern.len()
        )));
    }
    let config = meta::Config::new()
        .nfa_size_limit(Some(limit))
        .onepass_size_limit(Some(limit))
        .dfa_size_limit(Some(limit))
        .hybrid_cache_capacity(REGEX_CACHE_BYTES);
    meta::Regex::builder()
        .configure(config)
        .build(pattern)
        .map(|regex| Pattern {
            regex,
            source: pattern.to_owned(),
        })
        .map_err(|e| match e.size_limit() {
            Some(_) => Compile::TooLarge,
            None => Compile::Invalid(format!(
                "invalid regular expression: {}",
                e.to_string().replace('\n', " ")
            )),
        })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use imaged_types::{Descriptor, Digest, PROTECTED_LABEL, PROTECTED_VALUE};

    use super::*;

    fn image(name: &str, labels: &[(&str, &str)]) -> Image {
        Image {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            target: Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
                size: 1,
                annotations: [("org.opencontainers.image.ref.name".to_string(), "7".to_string())]
                    .into_iter()
                    .collect(),
            },
            created_at: UNIX_EPOCH,
            updated_at: UNIX_EPOCH,
            create_revision: 0,
            mod_revision: 0,
        }
    }

    fn matches(filters: &[&str], img: &Image) -> bool {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filter::parse(Subject::Image, "filters", &filters).unwrap().matches(img)
    }

    fn error(filter: &str) -> String {
        Filter::parse(Subject::Image, "filters", &[filter.to_string()])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn protected_reads_the_protection_label_as_true_or_false() {
        let pinned = image("a", &[(PROTECTED_LABEL, PROTECTED_VALUE)]);
        let other_value = image("b", &[(PROTECTED_LABEL, "no")]);
        let plain = image("c", &[]);
        assert!(matches(&["protected==true"], &pinned));
        assert!(!matches(&["protected==true"], &other_value));
        assert!(matches(&["protected==false"], &plain));
        assert!(matches(&["protected!=true"], &plain));
        assert!(matches(&["protected"], &plain), "always present");
        assert!(error("protected==yes").contains("\"yes\" is not a protection; expected true or false"));
    }

    #[test]
    fn operators() {
        let img = image("docker.io/library/redis:7", &[("env", "prod"), ("a.b", "c")]);
        assert!(matches(&["name==docker.io/library/redis:7"], &img));
        assert!(!matches(&["name==redis"], &img));
        assert!(matches(&["name!=redis"], &img));
        assert!(matches(&["name~=redis"], &img), "a regex matches anywhere");
        assert!(!matches(&["name~=^redis"], &img));
        assert!(matches(&["labels.env"], &img));
        assert!(!matches(&["labels.missing"], &img));
        assert!(matches(&["labels.missing!=x"], &img), "!= matches an absent field");
        assert!(!matches(&["labels.missing==\"\""], &img), "== needs presence");
        assert!(matches(&["labels.a.b==c"], &img), "the rest of the path is the key");
        assert!(matches(&["target.mediatype~=manifest"], &img));
        assert!(matches(&[&format!("target.digest==sha256:{}", "a".repeat(64))], &img));
        assert!(matches(&["annotations.\"org.opencontainers.image.ref.name\"==7"], &img));
    }

    #[test]
    fn commas_are_and_the_list_is_or() {
        let img = image("redis:7", &[("env", "prod")]);
        assert!(matches(&["name==redis:7,labels.env==prod"], &img));
        assert!(!matches(&["name==redis:7,labels.env==dev"], &img));
        assert!(matches(&["name==nope", "labels.env==prod"], &img));
        assert!(!matches(&["name==nope", "labels.env==dev"], &img));
        assert!(matches(&[], &img));
        assert!(matches(&["name==nope", ""], &img), "an empty filter matches all");
    }

    #[test]
    fn quoting() {
        let img = image(
            "with,comma and space",
            &[("com.example/with space", "x y"), ("k", "a\"b")],
        );
        assert!(matches(&["name==\"with,comma and space\""], &img));
        assert!(matches(&["labels.\"com.example/with space\"==\"x y\""], &img));
        assert!(matches(&["labels.k==\"a\\\"b\""], &img));
        assert!(matches(&["labels.k==\"a\\x22b\""], &img));
        assert!(matches(&["labels.k==\"a\\u0022b\""], &img));
        assert!(matches(&["labels.k==\"a\\042b\""], &img));
        assert!(matches(&["name~=/^with,comma/"], &img), "slash quotes a regex");
        assert!(matches(&["name~=|comma an|"], &img), "so does a pipe");

        // The README's examples, verbatim.
        let redis = image("docker.io/library/redis:7", &[("com.example/with space", "x")]);
        assert!(matches(&[r#"labels."com.example/with space"==x"#], &redis));
        assert!(matches(&[r"name~=/^docker\\.io\//"], &redis));
        assert!(!matches(&[r"name~=/^docker\\.io\//"], &image("dockerXio/x", &[])));
        assert!(
            matches(&[" name == \"with,comma and space\" "], &img),
            "spaces around tokens"
        );
    }

    #[test]
    fn errors_give_the_position() {
        let cases = [
            ("name==", "at position 6: unexpected end of filter; expected a value"),
            ("name=~x", "at position 4: unsupported operator \"=~\""),
            ("name x", "at position 5: unexpected \"x\"; expected an operator"),
            ("labels.\"k", "at position 7: quoted literal not terminated"),
            (
                "name==a,",
                "at position 8: unexpected end of filter; expected a field name",
            ),
            ("nmae==x", "at position 0: unknown field \"nmae\""),
            ("labels==x", "unknown field \"labels\""),
            ("name~=(", "at position 6: invalid regular expression"),
            ("name==\"a\\qb\"", "at position 8: illegal escape sequence"),
            ("name==a b", "at position 8: unexpected \"b\"; expected ',' or the end"),
            ("#", "at position 0: unexpected character '#'"),
        ];
        for (filter, want) in cases {
            let err = error(filter);
            assert!(err.contains(want), "{filter:?}: {err}");
            assert!(err.starts_with("invalid filters[0] "), "{err}");
        }
    }

    #[test]
    fn comparisons_on_size_and_times() {
        let mut img = image("a", &[]);
        img.target.size = 1500;
        img.created_at = imaged_types::time::parse_rfc3339("2024-03-01T10:00:00Z").unwrap();
        img.updated_at = imaged_types::time::parse_rfc3339("2024-06-01T00:00:00Z").unwrap();
        assert!(matches(&["target.size>1000"], &img));
        assert!(matches(&["target.size>=1500,target.size<=1500"], &img));
        assert!(!matches(&["target.size<1500"], &img));
        assert!(matches(&["target.size==1500"], &img));
        assert!(matches(&["target.size!=1"], &img));
        assert!(
            matches(&["created_at>=2024-03-01"], &img),
            "a bare date is midnight UTC"
        );
        assert!(!matches(&["created_at<2024-03-01T10:00:00Z"], &img));
        assert!(
            matches(&["created_at<=2024-03-01T12:00:00+02:00"], &img),
            "offsets apply"
        );
        assert!(matches(
            &["updated_at>created_at"].map(|_| "updated_at>2024-05-31"),
            &img
        ));
        assert!(matches(&["target.size"], &img), "presence of a numeric field");
        assert!(error("target.size>big").contains("\"big\" is not a size in bytes"));
        assert!(error("created_at>2024-13-01").contains("expected an RFC 3339 time"));
        assert!(error("target.size~=1").contains("unsupported operator \"~=\" for a number or time"));
        assert!(error("name>a").contains("compares numbers and times only"));
        assert!(error("target.size=<1").contains("unsupported operator \"=<\""));
    }

    #[test]
    fn bounds() {
        let many: Vec<String> = (0..65).map(|i| format!("name=={i}")).collect();
        assert!(Filter::parse(Subject::Image, "filters", &many).is_err());
        assert!(error(&format!("name=={}", "x".repeat(4096))).contains("more than 4096"));
        assert!(error(&format!("name~={}", "x".repeat(1025))).contains("more than 1024"));
        // A pattern that would compile to a huge program is refused quickly.
        assert!(error("name~=(\\w{100}){100}").contains("compiles to more than 1024 KiB"));
    }

    #[test]
    fn one_requests_regular_expressions_share_one_budget() {
        let limits = RegexLimits::default();
        // More than the count is refused before anything compiles.
        let count = vec!["name~=a".to_string(); limits.max_regexes + 1];
        let refused = Filter::parse(Subject::Image, "filters", &count)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("max_regex_filters"), "{refused}");
        // Three Unicode \w{20} fit; seven together pass the bytes.
        let few = [r"name~=\w{20}"; 3].join(",");
        let filter = Filter::parse(Subject::Image, "filters", &[few]).unwrap();
        assert!(filter.regex_bytes() > 3 << 20 && filter.regex_bytes() <= limits.budget_bytes);
        let many = [r"name~=\w{20}"; 7].join(",");
        let refused = Filter::parse(Subject::Image, "filters", &[many])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("regex_budget_kb"), "{refused}");
        // The budget is the request's: spread over filters, the same.
        let spread = vec![r"name~=\w{20}".to_string(); 7];
        let refused = Filter::parse(Subject::Image, "filters", &spread)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("regex_budget_kb"), "{refused}");
    }

    #[test]
    fn namespaces_have_name_and_labels_only() {
        let labels: Labels = [("team".to_string(), "a".to_string())].into_iter().collect();
        let f = Filter::parse(Subject::Namespace, "filter", &["labels.team==a".to_string()]).unwrap();
        assert!(f.matches(&NamespaceFields {
            name: "x",
            labels: &labels
        }));
        assert!(Filter::parse(Subject::Namespace, "filter", &["target.digest==x".to_string()]).is_err());
    }

    #[test]
    fn images_have_a_repository_and_repositories_have_name_tags_and_updated_at() {
        let img = image("localhost:5000/app:1", &[]);
        assert!(matches(&["repository==localhost:5000/app"], &img));
        assert!(!matches(&["repository==localhost"], &img));
        let repository = Repository {
            name: "docker.io/library/redis".into(),
            tags: 3,
            newest: "docker.io/library/redis:7".into(),
            newest_updated_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * 365 * 55),
            mod_revision: 9,
        };
        let parse = |filter: &str| Filter::parse(Subject::Repository, "filters", &[filter.to_string()]);
        for (filter, expected) in [
            ("tags>=3", true),
            ("tags>3", false),
            ("name~=redis$", true),
            ("name==docker.io/library/redis", true),
            ("updated_at>2024-06-01", true),
            ("updated_at<2024-06-01", false),
        ] {
            assert_eq!(parse(filter).unwrap().matches(&repository), expected, "{filter}");
        }
        let refused = parse("labels.a==b").unwrap_err().to_string();
        assert!(refused.contains("known fields: name, tags, updated_at"), "{refused}");
        assert!(
            parse("tags>many")
                .unwrap_err()
                .to_string()
                .contains("\"many\" is not a count of images")
        );
    }
}
